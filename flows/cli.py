"""The ``bl`` command: bl_core's subcommands plus ``bl grid``, which runs the Prefect
``full-grid`` flow in this process (a temporary local Prefect server unless
``PREFECT_API_URL`` points at a running one)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# bl_core (torch, transformers) is imported in main(): `bl grid` says what it is loading
# first instead of sitting silent for ~10 s.

STAGES = (
    "split-corpus",
    "prepare-tokenizer",
    "pack-tokens",
    "prepare-teacher",
    "build-student",
    "teacher-outputs",
    "distill",
    "compress",
    "evaluate-perplexity",
    "evaluate-icl",
    "measure-speed",
    "aggregate-report",
)


def _prefect_environment(output_dir: Path) -> None:
    """Defaults measured in ../shared/NOTES.md; anything the user set wins."""
    from flows.server import prefect_home  # issue 17: a home per live process

    os.environ.setdefault("PREFECT_HOME", str(prefect_home(output_dir)))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # Prefect won't
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")  # Prefect's SDK telemetry: offline, and a notice
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "bl_core")


def add_grid_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "grid",
        help="run the full grid (Prefect flow full-grid) and print Table 2",
        description="Teachers x methods x budgets: distil, compress, evaluate, report. Stages "
        "are cached: rerunning recomputes only failed or changed stages.",
    )
    p.add_argument("--config", default="tiny", help="preset name or YAML path (default tiny)")
    p.add_argument("--out", help="output directory (default outputs/<preset>)")
    p.add_argument("--teachers", nargs="+", help="rungs to distil from (default: all)")
    p.add_argument("--methods", nargs="+", choices=["kd_full", "kd_lora", "budgeted"])
    p.add_argument("--budgets", nargs="+", type=float, help="final fractions F for budgeted")
    p.add_argument("--seeds", nargs="+", type=int, help="training seeds (default 0)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    p.add_argument(
        "--force",
        action="append",
        choices=STAGES,
        metavar="STAGE",
        help=f"recompute a stage on purpose; one of {', '.join(STAGES)}",
    )
    p.set_defaults(func=run_grid)


def run_grid(args: argparse.Namespace) -> int:
    from bl_core.preset_files import parse_overrides, resolve_config

    _, preset = resolve_config(args.config)  # a bad preset fails before Prefect starts
    overrides = parse_overrides(args.set)
    out = Path(args.out or Path("outputs") / preset).resolve()
    from flows.preflight import validate_grid_args

    validate_grid_args(args, overrides, out)  # issue 17: all checks before any server or file
    out.mkdir(parents=True, exist_ok=True)
    _prefect_environment(out)
    from flows.grid import full_grid  # imports prefect: only now that its env is set
    from flows.server import SupervisedRun

    if not os.environ.get("PREFECT_API_URL"):
        _status("starting Prefect's temporary local server (10-20 s; PREFECT_API_URL: use yours)")
    with SupervisedRun(out, "bl grid") as run:  # issue 17: Ctrl-C/SIGTERM, server lifetime
        result = full_grid(
            config=args.config,
            output_dir=str(out),
            teachers=args.teachers,
            methods=args.methods,
            budgets=args.budgets,
            seeds=args.seeds,
            overrides=overrides or None,
            force=args.force,
        )
        print_summary(result, out)
    return run.exit_code


def _status(message: str) -> None:
    """A line for the silent phases before the flow's own logging starts."""
    print(f"bl grid: {message}", file=sys.stderr, flush=True)


def print_summary(result: dict, out: Path, width: int = 100) -> None:
    """Table 2 in ``width`` columns (the full table is in the report), where everything is,
    and how much of the run came from cache."""
    import pandas as pd

    from tasks.report_summary import compact_table
    from tasks.report_tables import display_headers, format_table

    report = result["report"]
    table2 = pd.read_csv(Path(report["report_dir"]) / "table2.csv", index_col=0)
    compact = compact_table(display_headers(format_table(table2)), width)
    print("\n" + (compact or "(Table 2 is wider than the terminal: see table2.md)"))
    print(f"full table: {report['table2_md']}")
    print(f"report:     {report['report_md']}")
    print(f"outputs:    {out}")
    uri = os.environ["MLFLOW_TRACKING_URI"]
    if not uri.startswith(("http://", "https://")):
        print(f"MLflow:     mlflow ui --backend-store-uri {uri}")
    if report.get("mlflow_url"):
        print(f"budgets:    {report['mlflow_url']}")
    stages = result.get("stages")
    if stages:
        print(
            f"stages:     {stages['from_cache']} of {stages['stages']} from cache, "
            f"{stages['ran']} ran ({stages['seconds']:.0f} s in the flow)"
        )


def add_scaling_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "scaling",
        help="token-scaling study: Budgeted / KD LoRA perplexity vs distillation steps",
        description="KD LoRA and Budgeted LoRA from one teacher at several distillation "
        "budgets and seeds (Prefect flow token-scaling); writes report/scaling.{csv,md,png}.",
    )
    p.add_argument("--config", default="tiny", help="preset name or YAML path (default tiny)")
    p.add_argument("--out", help="output directory (default outputs/<preset>-scaling)")
    p.add_argument("--teacher", help="ladder rung to distil from (default: the smallest)")
    p.add_argument("--steps", nargs="+", type=int, help="optimizer steps per budget")
    p.add_argument("--budgets", nargs="+", type=float, help="final fractions F")
    p.add_argument("--seeds", nargs="+", type=int, help="training seeds (default 0 1)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    p.set_defaults(func=run_scaling)


def run_scaling(args: argparse.Namespace) -> int:
    from bl_core.preset_files import parse_overrides, resolve_config

    _, preset = resolve_config(args.config)  # a bad preset fails before Prefect starts
    overrides = parse_overrides(args.set)
    out = Path(args.out or Path("outputs") / f"{preset}-scaling").resolve()
    from flows.preflight import validate_scaling_args

    validate_scaling_args(args, overrides, out)  # issue 17: all checks before any server or file
    out.mkdir(parents=True, exist_ok=True)
    _prefect_environment(out)
    from flows.scaling import token_scaling  # imports prefect: only now that its env is set

    result = token_scaling(
        config=args.config,
        output_dir=str(out),
        teacher=args.teacher,
        steps=args.steps,
        budgets=args.budgets,
        seeds=args.seeds,
        overrides=overrides or None,
    )
    report = result["report"]
    print("\n" + Path(report["markdown"]).read_text())
    print(f"figure:   {report['figure']}")
    print(f"table:    {report['csv']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv)[:1] == ["grid"]:
        _status("loading torch, transformers, Prefect and MLflow (about 10 s) ...")
    from bl_core.cli import build_parser, run_parsed

    parser = build_parser(extra=[add_grid_parser, add_scaling_parser])
    return run_parsed(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
