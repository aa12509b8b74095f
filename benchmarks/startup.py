"""How long the ``bl`` commands take before and without any work (issues 16 and 18), each
timed as a fresh process, the way a user runs it:

    python benchmarks/startup.py                                  # help and plan only
    python benchmarks/startup.py --grid outputs/micro --config micro

* ``bl --help``, ``bl plan --help`` and ``bl plan`` on the paper's 0.13B Mistral config
  (goal: under 1 s on 2 cores);
* the work-free floor of any flow process: importing torch, transformers, Prefect, MLflow
  and pandas, starting ``bl grid``'s temporary Prefect server on an existing database and
  running an empty flow;
* with ``--grid`` (a finished grid and the ``--config`` it ran with): ``bl grid`` rerun
  unchanged — answered from ``report/complete.json`` — and ``bl grid --recheck``, the
  same rerun through the flow with every stage from cache (goal: the unchanged rerun well
  under the floor).

Prints the median of ``--repeats`` runs of each and writes JSON to
``benchmarks/results/startup.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAPER_CONFIG = ROOT / "bl_core" / "presets" / "models" / "mistral-0.13b.json"
BL = [sys.executable, "-m", "flows.cli"]
FLOOR = """
import os, sys
from pathlib import Path
import torch, transformers, mlflow, pandas, prefect
from prefect import flow
from flows.server import SupervisedRun

@flow
def empty():
    return 0

out = Path(sys.argv[1])
(out / "prefect").mkdir(parents=True, exist_ok=True)
with SupervisedRun(out, "floor"):  # bl grid's own temporary server
    empty()
"""


def _timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--grid", help="a finished grid's output directory")
    p.add_argument("--config", default="micro", help="the preset or YAML that grid ran")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=str(RESULTS / "startup.json"))
    args = p.parse_args(argv)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PREFECT_HOME"):
        env.pop(name, None)
    commands = {
        "bl --help": [*BL, "--help"],
        "bl plan --help": [*BL, "plan", "--help"],
        "bl plan (0.13B Mistral, F=0.4)": [
            *BL,
            "plan",
            "--model-config",
            str(PAPER_CONFIG),
            "--final-fraction",
            "0.4",
        ],
    }
    rows = {name: [_timed(c, env) for _ in range(args.repeats)] for name, c in commands.items()}
    with tempfile.TemporaryDirectory() as out:  # one home, as a rerun finds its database
        floor_env = dict(env, PREFECT_HOME=str(Path(out) / "home"))
        floor = [sys.executable, "-c", FLOOR, out]
        _timed(floor, floor_env)  # creates the database, as a grid's first run did
        rows["work-free floor (imports + server + empty flow)"] = [
            _timed(floor, floor_env) for _ in range(args.repeats)
        ]
    if args.grid:
        grid = [*BL, "grid", "--config", args.config, "--out", str(Path(args.grid).resolve())]
        _timed(grid, env)  # the grid's record must be current (a code change runs the flow)
        rows["bl grid, unchanged rerun"] = [_timed(grid, env) for _ in range(args.repeats)]
        rows["bl grid --recheck (flow, all cached)"] = [
            _timed([*grid, "--recheck"], env) for _ in range(args.repeats)
        ]
    figures = {name: statistics.median(times) for name, times in rows.items()}
    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'command':<52} {'median s':>9}  runs")
    for name, times in rows.items():
        print(f"{name:<52} {figures[name]:>9.2f}  {' '.join(f'{t:.2f}' for t in times)}")
    payload: dict[str, Any] = {
        "benchmark": "startup",
        "environment": {"cpu_count": os.cpu_count(), "load_average": load},
        "settings": {"repeats": args.repeats, "grid": args.grid, "config": args.config},
        "results": {name: {"median_s": figures[name], "runs_s": t} for name, t in rows.items()},
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
