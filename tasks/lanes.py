"""A teacher's lockstep cohort split over CPU processes (``pipeline.cohort_lanes``).

On CPU the tiny ladder's steps are too small for two intra-op threads to keep two cores
busy (0.18 s per cohort step with 2 threads, 0.24 s with 1), and Python threads share one
interpreter lock. Two processes of one thread each do: each *lane* trains its share of the
cohort's cells, in lockstep on its own teacher forward per batch, in
``python -m tasks.lanes SPEC``. A cell's weights do not depend on which lane trained it
(each keeps its own RNG stream and sees the same batches); the teacher forward is simply
run once per lane instead of once. Measured on the 2-core machine (docs/RESULTS.md): the
4-cell tiny-s cohort, 300 steps, 45.2 s in one process with 2 threads against 31.7 s in two
lanes of two cells each.

The parent relays each lane's progress lines to the stage's log, forwards a stop request
(SIGINT) so every lane checkpoints, and reports a lane that died as its cells' errors; a
lane that loses its parent stops at its next step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import torch

from bl_core import interrupt
from bl_core.io import atomic_write_json

# Lines a lane prints that are progress, relayed to the stage's log (the rest is kept for
# the error message of a lane that dies).
_PROGRESS = "BL-PROGRESS "


def split_lanes(members: list[dict[str, Any]], lanes: int) -> list[list[dict[str, Any]]]:
    """Round-robin: with the grid's order (kd_full, kd_lora, budgeted...) each lane gets a
    mix of dense and adapter cells, so the lanes finish together."""
    lanes = max(1, min(lanes, len(members)))
    return [members[i::lanes] for i in range(lanes)]


def run_lanes(
    spec: dict[str, Any], lanes: int, work_dir: Path, log: Any, poll_s: float = 0.2
) -> dict[str, Any]:
    """Train ``spec["cohort"]`` (the members of ``bl_core.launch``'s cohort spec, each
    with its ``mlflow_run_id``) in ``lanes`` processes; returns ``{"cells": {label: "ok"
    | error}, "forwards", "requests"}`` summed over the lanes. ``log``: where progress
    lines go (the stage's run logger)."""
    groups = split_lanes(spec["cohort"], lanes)
    threads = max(1, torch.get_num_threads() // len(groups))
    procs: list[tuple[list[dict[str, Any]], subprocess.Popen, deque, Path, Path]] = []
    relays: list[threading.Thread] = []
    try:
        for i, group in enumerate(groups):
            spec_path = work_dir / f"cohort-lane{i}-{os.getpid()}.json"
            result_path = spec_path.with_suffix(".result.json")
            result_path.unlink(missing_ok=True)
            lane = spec | {"cohort": group, "result_path": str(result_path), "threads": threads}
            atomic_write_json(spec_path, lane | {"parent_pid": os.getpid()})
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
            proc = subprocess.Popen(
                [sys.executable, "-m", "tasks.lanes", str(spec_path)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                start_new_session=True,  # Ctrl-C reaches the parent only; it forwards one
            )
            tail: deque = deque(maxlen=40)
            relays.append(threading.Thread(target=_relay, args=(proc, tail, log), daemon=True))
            relays[-1].start()
            procs.append((group, proc, tail, spec_path, result_path))
        forwarded = False
        while any(p.poll() is None for _, p, *_ in procs):
            if interrupt.requested() and not forwarded:
                for _, p, *_ in procs:
                    if p.poll() is None:
                        p.send_signal(signal.SIGINT)  # each lane checkpoints and exits
                forwarded = True
            time.sleep(poll_s)
    except BaseException:
        for _, p, *_ in procs:
            if p.poll() is None:
                p.kill()
        raise
    for relay in relays:  # the last lines (an error's traceback) read to the end
        relay.join(timeout=10)
    result: dict[str, Any] = {"cells": {}, "forwards": 0, "requests": 0}
    for group, proc, tail, spec_path, result_path in procs:
        spec_path.unlink(missing_ok=True)
        if result_path.is_file():
            done = json.loads(result_path.read_text())
            result_path.unlink()
            result["cells"] |= done["cells"]
            result["forwards"] += done["forwards"]
            result["requests"] += done["requests"]
        else:
            why = f"cohort lane exited with code {proc.wait()}: " + "".join(tail)[-2000:]
            result["cells"] |= {m["label"]: why for m in group}
    interrupt.check("distill-cohort")
    return result


def _relay(proc: subprocess.Popen, tail: deque, log: Any) -> None:
    for line in proc.stdout:  # type: ignore[union-attr]
        if line.startswith(_PROGRESS):
            log.info(line[len(_PROGRESS) :].rstrip())
        else:
            tail.append(line)


class _LaneProgress:
    """A lane's progress lines on stdout, for the parent to relay."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def info(self, message: str) -> None:
        with self.lock:
            print(_PROGRESS + message, flush=True)


def lane_main(spec_path: str) -> int:
    """One lane: its cells in lockstep on ``threads`` torch threads (run in a subprocess)."""
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    from bl_core.allocator import tune_cpu_allocator
    from bl_core.launch import run_cohort
    from bl_core.tracking import FanoutLogger
    from tasks.progress import ProgressLogger
    from tasks.tracking import MLflowLogger

    tune_cpu_allocator()
    signal.signal(signal.SIGINT, lambda *_: interrupt.request_stop(signal.SIGINT))
    parent = spec["parent_pid"]
    out = _LaneProgress()

    def logger(member: dict[str, Any]) -> Any:
        progress = ProgressLogger(f"{member['label']} distill", out)  # type: ignore[arg-type]
        run_id = member.get("mlflow_run_id")
        return FanoutLogger(MLflowLogger(run_id), progress) if run_id else progress

    def orphaned(label: str, step: int) -> None:
        if os.getppid() != parent:  # the pipeline died: stop at this step, checkpointed
            interrupt.request_stop(signal.SIGTERM)

    try:
        run_cohort(spec, logger_for=logger, on_step=orphaned)
    except interrupt.Interrupted:
        return 128 + signal.SIGINT
    return 0


if __name__ == "__main__":
    sys.exit(lane_main(sys.argv[1]))
