"""The ``bl`` command: bl_core's subcommands plus ``bl grid`` and ``bl train``, which run
the Prefect ``full-grid`` and ``single-run`` flows in this process over one stage store
(a temporary local Prefect server unless ``PREFECT_API_URL`` points at a running one)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bl_core.cli import add_config_arguments, build_parser, load_config_arguments, run_parsed
from bl_core.errors import ConfigError

# bl_core.cli imports nothing heavy: torch, transformers and Prefect load in the run_*
# functions, after `bl grid` has said what it is loading (they take ~10 s).

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
    add_config_arguments(p, default="tiny")
    p.add_argument("--out", help="output directory (default outputs/<preset>)")
    p.add_argument("--teachers", nargs="+", help="rungs to distil from (default: all)")
    p.add_argument("--methods", nargs="+", choices=["kd_full", "kd_lora", "budgeted"])
    p.add_argument("--budgets", nargs="+", type=float, help="final fractions F for budgeted")
    p.add_argument("--seeds", nargs="+", type=int, help="training seeds (default 0)")
    _add_force(p)
    p.add_argument(
        "--recheck",
        action="store_true",
        help="run the flow even when this grid is complete and nothing changed (by default "
        "such a rerun prints the stored summary without starting Prefect)",
    )
    p.set_defaults(func=run_grid)


def _add_force(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force",
        action="append",
        choices=STAGES,
        metavar="STAGE",
        help=f"recompute a stage on purpose; one of {', '.join(STAGES)}",
    )


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="one cell (teacher x method x budget) over the grid's stage store",
        description="Run one grid cell (Prefect flow single-run): the same cached stages, "
        "stage store (<out>/stages) and MLflow experiment as bl grid, so it reuses what a "
        "grid computed and resumes like a grid cell. Prepares only the named teacher and the "
        "smallest rung (the warm start).",
    )
    add_config_arguments(p, default="micro")
    p.add_argument("--out", help="output directory (default outputs/<preset>, as bl grid)")
    p.add_argument(
        "--method",
        default="budgeted",
        choices=["pretrain", "kd_full", "kd_lora", "budgeted"],
        help="pretrain: the grid's from-scratch reference student (cross-entropy)",
    )
    p.add_argument("--teacher", help="ladder rung to distil from (default: the largest)")
    p.add_argument("--final-fraction", type=float, help="budget F for --method budgeted")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    _add_force(p)
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    cfg, preset = load_config_arguments(args)  # bad values fail before Prefect starts
    known = [t.name for t in cfg.teachers]
    if args.teacher is not None and args.teacher not in known:
        raise ConfigError(
            f"--teacher {args.teacher!r} is not in the ladder (known: {', '.join(known)})"
        )
    from bl_core.preset_files import config_path, parse_overrides

    out = Path(args.out or Path("outputs") / preset).resolve()
    from flows.preflight import validate_train_args

    validate_train_args(args, out)  # all checks before any server or file
    _status("loading torch, transformers, Prefect and MLflow (about 10 s) ...", "train")
    run = _supervised_run(out, "train")
    from flows.grid import single_run  # imports prefect: only now that its env is set

    with run:  # Ctrl-C/SIGTERM, the server's lifetime
        cell = single_run(
            config=str(config_path(args.config)),  # the name resolved once, here
            teacher=args.teacher,
            method=args.method,
            final_fraction=args.final_fraction,
            seed=args.seed,
            output_dir=str(out),
            overrides=parse_overrides(args.set) or None,
            force=args.force,
        )
    if run.exit_code:
        return run.exit_code
    artifacts = cell["artifacts"]
    print(f"\ncell:       {cell['label']}  ppl {cell['ppl']:.2f}")
    print(f"model:      {artifacts['model_dir']}")
    print(f"metrics:    {artifacts['metrics_path']}")
    print(f"stages:     {out / 'stages'} (shared with bl grid --out {out})")
    print(f"MLflow:     experiment {cell['experiment']!r} in {os.environ['MLFLOW_TRACKING_URI']}")
    stages = cell.get("stages")
    if stages:
        print(
            f"stages run: {stages['from_cache']} of {stages['stages']} from cache, "
            f"{stages['ran']} ran ({stages['seconds']:.0f} s in the flow)"
        )
    return 0


def run_grid(args: argparse.Namespace) -> int:
    from bl_core.preset_files import config_path, parse_overrides

    _, preset = load_config_arguments(args)  # bad values fail before Prefect starts
    overrides = parse_overrides(args.set)
    out = Path(args.out or Path("outputs") / preset).resolve()
    from flows import complete
    from flows.preflight import validate_grid_args

    cfg = validate_grid_args(args, overrides, out)  # issue 17: all checks before any server
    key = complete.grid_key(cfg, args.teachers)
    if not (args.force or args.recheck or os.environ.get("PREFECT_API_URL")):
        summary = complete.completed_summary(out, key)
        if summary is not None:
            _status(f"{out} holds this grid, complete, and nothing it depends on has changed")
            print("\n" + summary)
            return 0
    complete.forget(out)  # a run that stops half-way leaves no completion record
    _status("loading torch, transformers, Prefect and MLflow (about 10 s) ...")
    run = _supervised_run(out, "grid")
    from flows.grid import full_grid  # imports prefect: only now that its env is set

    with run:  # Ctrl-C/SIGTERM, the server's lifetime
        result = full_grid(
            config=str(config_path(args.config)),  # the name resolved once, here
            output_dir=str(out),
            teachers=args.teachers,
            methods=args.methods,
            budgets=args.budgets,
            seeds=args.seeds,
            overrides=overrides or None,
            force=args.force,
        )
        summary = summary_text(result, out)
        print("\n" + summary)
    if run.exit_code == 0:
        try:
            complete.record(out, key, result, summary)
        except OSError as err:  # the grid is done; only the next rerun's shortcut is lost
            _status(f"note: could not write {complete.RECORD} ({err}); a rerun runs the flow")
    return run.exit_code


def _supervised_run(out: Path, command: str):
    """After the checks: create ``out``, point Prefect and MLflow at it, and return the
    :class:`flows.server.SupervisedRun` (signals, the temporary server) ``bl <command>``
    runs its flow in."""
    out.mkdir(parents=True, exist_ok=True)
    _prefect_environment(out)
    from flows.server import SupervisedRun  # imports prefect: only now that its env is set

    if not os.environ.get("PREFECT_API_URL"):
        _status(
            "starting Prefect's temporary local server (10-20 s; PREFECT_API_URL: use yours)",
            command,
        )
    return SupervisedRun(out, f"bl {command}")


def _status(message: str, command: str = "grid") -> None:
    """A line for the silent phases before the flow's own logging starts."""
    print(f"bl {command}: {message}", file=sys.stderr, flush=True)


def summary_text(result: dict, out: Path, width: int = 100) -> str:
    """Table 2 in ``width`` columns (the full table is in the report), where everything is,
    and how much of the run came from cache."""
    import pandas as pd

    from tasks.report_summary import compact_table
    from tasks.report_tables import display_headers, format_table

    report = result["report"]
    table2 = pd.read_csv(Path(report["report_dir"]) / "table2.csv", index_col=0)
    compact = compact_table(display_headers(format_table(table2)), width)
    lines = [
        compact or "(Table 2 is wider than the terminal: see table2.md)",
        f"full table: {report['table2_md']}",
        f"report:     {report['report_md']}",
        f"outputs:    {out}",
    ]
    uri = os.environ["MLFLOW_TRACKING_URI"]
    if not uri.startswith(("http://", "https://")):
        lines.append(f"MLflow:     mlflow ui --backend-store-uri {uri}")
    if report.get("mlflow_url"):
        lines.append(f"budgets:    {report['mlflow_url']}")
    stages = result.get("stages")
    if stages:
        lines.append(
            f"stages:     {stages['from_cache']} of {stages['stages']} from cache, "
            f"{stages['ran']} ran ({stages['seconds']:.0f} s in the flow)"
        )
    return "\n".join(lines)


def add_scaling_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "scaling",
        help="token-scaling study: Budgeted / KD LoRA perplexity vs distillation steps",
        description="KD LoRA and Budgeted LoRA from one teacher at several distillation "
        "budgets and seeds (Prefect flow token-scaling); writes report/scaling.{csv,md,png}.",
    )
    add_config_arguments(p, default="tiny")
    p.add_argument("--out", help="output directory (default outputs/<preset>-scaling)")
    p.add_argument("--teacher", help="ladder rung to distil from (default: the smallest)")
    p.add_argument("--steps", nargs="+", type=int, help="optimizer steps per budget")
    p.add_argument("--budgets", nargs="+", type=float, help="final fractions F")
    p.add_argument("--seeds", nargs="+", type=int, help="training seeds (default 0 1)")
    p.set_defaults(func=run_scaling)


def run_scaling(args: argparse.Namespace) -> int:
    from bl_core.preset_files import config_path, parse_overrides

    _, preset = load_config_arguments(args)  # bad values fail before Prefect starts
    overrides = parse_overrides(args.set)
    out = Path(args.out or Path("outputs") / f"{preset}-scaling").resolve()
    from flows.preflight import validate_scaling_args

    validate_scaling_args(args, overrides, out)  # issue 17: all checks before any server or file
    run = _supervised_run(out, "scaling")
    from flows.scaling import token_scaling  # imports prefect: only now that its env is set

    with run:  # Ctrl-C/SIGTERM, the server's lifetime
        result = token_scaling(
            config=str(config_path(args.config)),  # the name resolved once, here
            output_dir=str(out),
            teacher=args.teacher,
            steps=args.steps,
            budgets=args.budgets,
            seeds=args.seeds,
            overrides=overrides or None,
        )
    if run.exit_code:
        return run.exit_code
    report = result["report"]
    print("\n" + Path(report["markdown"]).read_text())
    print(f"figure:   {report['figure']}")
    print(f"table:    {report['csv']}")
    return 0


def bl_parser() -> argparse.ArgumentParser:
    """Every ``bl`` subcommand: bl_core's and the Prefect-backed ones."""
    return build_parser(extra=[add_grid_parser, add_train_parser, add_scaling_parser])


def main(argv: list[str] | None = None) -> int:
    parser = bl_parser()
    return run_parsed(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
