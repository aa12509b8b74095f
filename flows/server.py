"""The temporary Prefect server of a ``bl grid`` run, and its home (issue 17).

Prefect's own temporary server (``SubprocessASGIServer``) shares the terminal's process
group — so Ctrl-C killed it under the running grid, which then hung on its API calls —
and it outlives a SIGKILLed grid. Here it runs in its own session (Ctrl-C reaches only
``bl grid``, which stops it on the way out) with ``PR_SET_PDEATHSIG``: the kernel
terminates it when the grid process dies, however it dies.

Each process gets a Prefect home of its own when another live process holds the output
directory's (an ``flock``, released by the kernel on any exit): two workers sharing one
store no longer share one SQLite database (one failed startup with ``duplicate column
name``). Caching does not depend on the home: keys and results live in the store.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1
_HOME_LOCKS: list[Any] = []  # open lock files: held for the process's lifetime


def prefect_home(output_dir: Path) -> Path:
    """``<out>/prefect/home`` if no other live process uses it, else a home of this
    process's own, ``<out>/prefect/homes/<host>-<pid>``."""
    shared = output_dir / "prefect" / "home"
    shared.mkdir(parents=True, exist_ok=True)
    handle = open(output_dir / "prefect" / "home.lock", "a")  # noqa: SIM115 - held open
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        own = output_dir / "prefect" / "homes" / f"{socket.gethostname()}-{os.getpid()}"
        own.mkdir(parents=True, exist_ok=True)
        return own
    _HOME_LOCKS.append(handle)
    return shared


def _child_setup(parent_pid: int) -> None:
    """In the server process before exec: its own session, and death with its parent."""
    os.setsid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the parent's atexit stop still runs
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _server_class() -> type:
    from prefect.server.api.server import SubprocessASGIServer

    class SupervisedServer(SubprocessASGIServer):
        """Prefect's temporary server, started in its own session, dying with its parent."""

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            real_popen = subprocess.Popen
            parent = os.getpid()

            def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
                return real_popen(*args, preexec_fn=lambda: _child_setup(parent), **kwargs)

            subprocess.Popen = popen  # only for this one call, in this (main) thread
            try:
                return super()._run_uvicorn_command()
            finally:
                subprocess.Popen = real_popen

        def stop(self) -> None:
            """Prefect's stop waits 5 s for a graceful shutdown that open keep-alive
            connections delay; its database survives a kill (SQLite), so 1 s is enough."""
            process = self.server_process
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    process.kill()
            super().stop()

    return SupervisedServer


class TemporaryServer:
    """``with TemporaryServer() as url:`` a Prefect API for this process (a no-op when
    ``PREFECT_API_URL`` names one). The server's PID is written to ``pid_file``."""

    def __init__(self, pid_file: Path | None = None) -> None:
        self.pid_file = pid_file
        self.server: Any = None
        self._settings: Any = None

    def __enter__(self) -> str | None:
        if os.environ.get("PREFECT_API_URL"):
            return os.environ["PREFECT_API_URL"]
        from prefect.settings import PREFECT_API_URL, temporary_settings

        self.server = _server_class()()
        self.server.start()
        if self.pid_file is not None and self.server.server_process is not None:
            self.pid_file.write_text(f"{self.server.server_process.pid}\n")
        self._settings = temporary_settings({PREFECT_API_URL: self.server.api_url})
        self._settings.__enter__()
        return self.server.api_url

    def stop(self) -> None:
        """Stop the server now (also safe from a signal handler, and twice)."""
        server, self.server = self.server, None
        if server is not None and server.server_process is not None:
            try:
                os.killpg(server.server_process.pid, signal.SIGTERM)
            except OSError:
                pass
            server.stop()

    def __exit__(self, *exc: object) -> None:
        """Nothing now: Prefect's exit handlers still send the last logs and events to the
        server (stopped first, they retried for minutes: the exit hung), and the server's
        own exit handler, registered before theirs, stops it after them."""


def _own_sigterm() -> Any:
    """Keep Prefect's flow engine from replacing our SIGTERM handler for this run.

    Its bridge raises ``TerminationSignal`` in the main thread, which then waits for the
    worker threads — the training stage ran to its end (67 s measured) before anything
    stopped. In ``bl grid`` no Prefect runner sends cancellations, so the stop request
    (:mod:`bl_core.interrupt`) is the whole SIGTERM story. Returns the undo function."""
    import contextlib

    import prefect.flow_engine as engine

    original = engine.capture_sigterm
    engine.capture_sigterm = contextlib.nullcontext

    def restore() -> None:
        engine.capture_sigterm = original

    return restore


class SupervisedRun:
    """``with SupervisedRun(out, "bl grid") as run: ...; return run.exit_code``.

    Installs the stop handlers (:mod:`bl_core.interrupt`: the first SIGINT/SIGTERM stops
    at the next step boundary, the second exits at once, server included), starts the
    temporary server, and turns the failure that a stop request causes into exit status
    130 (SIGINT) or 143 (SIGTERM) with one line saying how to resume."""

    def __init__(self, output_dir: Path, prog: str) -> None:
        self.prog = prog
        self.server = TemporaryServer(output_dir / "prefect" / f"server-{os.getpid()}.pid")
        self.exit_code = 0
        self._restore: Any = None

    def __enter__(self) -> SupervisedRun:
        from bl_core import interrupt

        interrupt.reset()
        restore_handlers = interrupt.install(self.prog, on_exit_now=self.server.stop)
        restore_prefect = _own_sigterm()

        def restore() -> None:
            restore_prefect()
            restore_handlers()

        self._restore = restore
        try:
            self.server.__enter__()
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        from bl_core import interrupt

        try:
            self.server.__exit__(exc_type, exc, tb)
            pid_file = self.server.pid_file
            if pid_file is not None:
                pid_file.unlink(missing_ok=True)
        finally:
            self._restore()
        code = interrupt.exit_code()
        if code is None:
            return False  # a real failure: raised as before
        self.exit_code = code
        print(
            f"{self.prog}: stopped ({'SIGINT' if code == 130 else 'SIGTERM'}); the "
            "running stage checkpointed. Rerun the same command to resume.",
            file=sys.stderr,
            flush=True,
        )
        _exit_now(code, self.server)
        return True


def _exit_now(code: int, server: TemporaryServer) -> None:
    """After a stop request: send Prefect's last logs and events, stop the server, exit.
    The interpreter's own teardown (thread joins, library exit handlers) took another 5-7 s
    under load, past what a 10 s grace period allows; every result is already on disk."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=3)
        except Exception:  # noqa: BLE001, S110 - best effort: the run is over
            pass
    if server.server is not None:
        server.server.stop()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
