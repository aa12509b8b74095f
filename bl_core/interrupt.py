"""A stop request that long-running work honours at its next step boundary (issue 17).

The ``bl`` commands turn the first SIGINT/SIGTERM into :func:`request_stop` instead of an
exception in the main thread (which Prefect's worker threads never see: a grid then ran
on for minutes after Ctrl-C). Training checks :func:`requested` after every optimizer step,
writes a checkpoint and raises :class:`Interrupted`; the pipeline refuses to start new
stages. A second signal exits at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

_STOP = threading.Event()
_SIGNAL: list[int] = []


class Interrupted(RuntimeError):
    """Work stopped on request (a signal); a rerun resumes from the last checkpoint."""


def request_stop(signum: int = signal.SIGINT) -> None:
    if not _SIGNAL:
        _SIGNAL.append(signum)
    _STOP.set()


def requested() -> bool:
    return _STOP.is_set()


def exit_code() -> int | None:
    """``128 + signal`` of the first stop request (130 SIGINT, 143 SIGTERM), else None."""
    return 128 + _SIGNAL[0] if _SIGNAL else None


def check(where: str = "") -> None:
    """Raise :class:`Interrupted` if a stop was requested."""
    if _STOP.is_set():
        name = signal.Signals(_SIGNAL[0]).name if _SIGNAL else "a stop request"
        raise Interrupted(f"interrupted by {name}{f' ({where})' if where else ''}")


def reset() -> None:
    """Forget a stop request (tests; a long-lived process that handled one)."""
    _STOP.clear()
    _SIGNAL.clear()


def install(prog: str, on_exit_now: Callable[[], None] | None = None) -> Callable[[], None]:
    """Handle SIGINT and SIGTERM in this (main) thread: the first requests a stop, the second
    calls ``on_exit_now`` (e.g. stop a server) and exits at once. Returns a function that
    restores the previous handlers."""

    def handler(signum: int, frame: object) -> None:
        if _STOP.is_set():
            if on_exit_now is not None:
                on_exit_now()
            os._exit(128 + signum)
        request_stop(signum)
        print(
            f"\n{prog}: {signal.Signals(signum).name}: stopping at the next step boundary "
            "(a checkpoint is written; rerun to resume). Press Ctrl-C again to exit now.",
            file=sys.stderr,
            flush=True,
        )

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    return restore
