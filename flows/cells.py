"""Composition of one grid: the shared stages (data, ladder, student) and per-cell
pipelines. A failing cell is recorded as failed (MLflow run FAILED) and the grid goes on;
the flow fails at the end, and a rerun recomputes only what did not finish."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.futures import PrefectFuture, wait

from bl_core import interrupt
from bl_core.config import BudgetedLoRAConfig, config_from_dict
from bl_core.errors import ConfigError
from bl_core.interrupt import Interrupted
from flows import status
from tasks import progress, tracking
from tasks.common import absolutize, cell_label, configure_stage
from tasks.compress import compress_task
from tasks.corpus import split_corpus_task
from tasks.distill import cell_config, cohort_task, distill_task, training_sections
from tasks.icl import icl_task
from tasks.packing import pack_task, tokenizer_task
from tasks.perplexity import perplexity_task
from tasks.retry import retry_transient
from tasks.speed import speed_task
from tasks.store import store_lock, with_artifact_check
from tasks.students import student_task
from tasks.teacher_outputs import teacher_outputs_task
from tasks.teachers import teacher_task

# Stages that train or evaluate get retries, for transient errors only (an OOM, a preempted
# GPU, an I/O timeout: tasks/retry.py); a bad input or a bug fails at once.
_RETRIED = {"distill", "prepare-teacher", "evaluate-perplexity", "evaluate-icl", "measure-speed"}


@dataclass
class GridContext:
    """Everything a grid's cells share, JSON-able so sub-flows can take it."""

    config: dict[str, Any]
    preset: str
    output_dir: str
    force: list[str]
    grid_id: str
    experiment: str
    parent_run_id: str
    tokenizer: dict[str, Any] = field(default_factory=dict)
    train_data: dict[str, Any] = field(default_factory=dict)
    val_data: dict[str, Any] = field(default_factory=dict)
    teacher_refs: dict[str, dict[str, Any]] = field(default_factory=dict)
    student_ref: dict[str, Any] = field(default_factory=dict)
    # rungs to prepare (None: the whole ladder; [] the largest); the smallest is always
    # added, as the student's warm start
    rungs: list[str] | None = None

    @property
    def cfg(self) -> BudgetedLoRAConfig:
        return config_from_dict(self.config)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def task(self, fn: Any) -> Any:
        """A stage bound to this grid's storage, forced if named in ``force``; none
        starts once a stop was requested (Ctrl-C, SIGTERM: bl_core/interrupt.py)."""
        interrupt.check(f"before {fn.name}")
        grid = status.get(self.grid_id)
        if grid is not None:
            grid.stages_called += 1  # one call per stage run: "M of N stages from cache"
        bound = configure_stage(fn, self.output_dir, force=fn.name in self.force)
        bound = with_artifact_check(bound, self.output_dir)  # issue 17: items 3, 4
        if fn.name in _RETRIED:
            p = self.cfg.pipeline
            bound = bound.with_options(
                retries=p.retries,
                retry_delay_seconds=p.retry_delay_s,
                retry_condition_fn=retry_transient,
            )
        return bound

    def tags(self, **extra: Any) -> dict[str, str]:
        return {
            "preset": self.preset,
            "grid_id": self.grid_id,
            "git_commit": tracking.git_commit(),
            **tracking.owner_tags(),  # issue 17: a rerun can end a dead process's runs
            **{k: str(v) for k, v in extra.items()},
        }

    def teacher_ref(self, name: str) -> dict[str, Any]:
        if name not in self.teacher_refs:
            known = ", ".join(self.teacher_refs)
            raise ConfigError(f"teacher {name!r} is not in the ladder (known: {known})")
        return self.teacher_refs[name]

    @classmethod
    def start(
        cls,
        cfg: BudgetedLoRAConfig,
        preset: str,
        out: str,
        force: list[str],
        grid_id: str,
        rungs: list[str] | None = None,
        run_name: str = "grid",
    ) -> GridContext:
        """Open the parent MLflow run and run the shared stages (preparing only ``rungs``
        and the smallest rung, when given)."""
        status.start(grid_id, out)
        progress.set_grid_flow_run(grid_id)
        uri = tracking.set_tracking_uri(out, cfg.tracking.uri)
        status.log(grid_id, f"MLflow: {uri} (a new store creates its tables first) ...")
        experiment = cfg.tracking.experiment or f"budgeted-lora-{preset}"
        with store_lock(out, "mlflow-setup"):  # two workers: one creates tables/experiment
            tracking.setup_experiment(experiment)
            stale = tracking.end_stale_runs(experiment)  # a killed grid's runs: KILLED
        if stale:
            status.log(grid_id, f"MLflow: {len(stale)} run(s) of a killed grid marked KILLED")
        config = cfg.model_dump(mode="json")
        ctx = cls(config, preset, out, list(force), grid_id, experiment, "", rungs=rungs)
        ctx.parent_run_id = tracking.open_run(
            experiment, f"{run_name}-{preset}-{grid_id[:8]}", ctx.tags(kind=run_name), config
        )
        try:
            ctx._prepare_shared()
        except BaseException as err:
            killed = interrupt.requested()
            tracking.close_run(ctx.parent_run_id, failed=True, error=repr(err), killed=killed)
            status.finish(grid_id)
            raise
        return ctx

    def _prepare_shared(self) -> None:
        c, out = self.config, self.output_dir
        say = lambda message: status.log(self.grid_id, message)  # noqa: E731
        say(f"data: split-corpus ({c['corpus']['source']} corpus), tokenizer, packing ...")
        split = self.task(split_corpus_task)(out, c["corpus"])
        self.tokenizer = self.task(tokenizer_task)(out, c["tokenizer"], c["teachers"], split)
        self.train_data = self.task(pack_task)(out, c["packing"], split, self.tokenizer, "train")
        self.val_data = self.task(pack_task)(out, c["packing"], split, self.tokenizer, "val")
        ladder = self._rungs_to_prepare()
        names = ", ".join(t["name"] for t in ladder)
        say(f"teachers: preparing {names} (embedded rungs are pretrained once, then cached)")
        futures, run_refs = {}, {}
        for teacher in ladder:
            # Opened when its pretraining starts, not now: each run shows its own duration.
            run_refs[teacher["name"]] = tracking.defer_run(
                self.experiment,
                f"pretrain/{teacher['name']}",
                self.tags(kind="pretrain", teacher=teacher["name"], method="pretrain"),
                {"teacher": teacher, "pretrain": c["pretrain"]},
                self.parent_run_id,
            )
            futures[teacher["name"]] = self.task(teacher_task).submit(
                out,
                teacher,
                c["pretrain"],
                self.tokenizer,
                self.train_data,
                mlflow_run_id=run_refs[teacher["name"]],
            )
        wait(list(futures.values()))
        for name, future in futures.items():  # each pretraining run ends here, whatever follows
            state = future.state
            ok = state.is_completed()
            if ok:
                self.teacher_refs[name] = absolutize(future.result(), out)
            ended = tracking.millis(state.timestamp)  # the stage's end, not this loop's
            run_id = tracking.start_run(run_refs[name], start_time=ended)  # cached: no body ran
            summary = self.teacher_refs.get(name, {}).get("pretrain_summary") or {}
            tracking.record_cell(
                run_id,
                {
                    "status": "ok" if ok else "killed" if interrupt.requested() else "failed",
                    "error": None if ok else f"prepare-teacher: {state.name}: {state.message}",
                    "train": summary,
                    "artifacts": _pretrain_artifacts(self.teacher_refs.get(name)),
                },
                end_time=ended,
            )
        failed = sorted(set(futures) - set(self.teacher_refs))
        interrupt.check("after prepare-teacher")
        if failed:
            raise RuntimeError(f"teacher preparation failed for {', '.join(failed)}")
        smallest = min(self.teacher_refs.values(), key=lambda t: t["num_params"])
        self.student_ref = self.task(student_task)(out, c["student"], smallest, self.tokenizer)

    def _rungs_to_prepare(self) -> list[dict[str, Any]]:
        """The ladder, or the named rungs (none named: the largest) plus the smallest."""
        teachers = self.config["teachers"]
        if self.rungs is None:
            return teachers
        from bl_core.ladder import rung_num_params

        cfg, vocab = self.cfg, self.tokenizer["vocab_size"]
        sizes = {t.name: rung_num_params(t, vocab) for t in cfg.teachers}
        wanted = set(self.rungs or [max(sizes, key=sizes.__getitem__)])
        wanted.add(min(sizes, key=sizes.__getitem__))
        return [t for t in teachers if t["name"] in wanted]

    def scratch_spec(self) -> dict[str, Any]:
        base = self.student_ref["from_teacher"]
        seed = self.cfg.pipeline.seeds[0]
        return {
            "teacher": base,
            "method": "pretrain",
            "final_fraction": None,
            "seed": seed,
            "label": cell_label("scratch", "pretrain", None, seed),
        }


def _pretrain_artifacts(teacher: dict[str, Any] | None) -> dict[str, Any]:
    """A pretrained rung's training log, so a run served from cache gets its curves too."""
    if not teacher or not teacher.get("pretrain_summary"):
        return {}
    log = Path(teacher["model_dir"]).parent / "metrics.jsonl"
    return {"metrics_path": str(log)} if log.is_file() else {}


def cell_params(config: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """A cell's MLflow params: the config it was trained with (its own seed and budget, not
    the preset's), the compression it was deployed with, and the cell itself."""
    method = spec["method"]
    sections = training_sections(method, config)
    params, _ = cell_config(sections, method, spec["final_fraction"], spec["seed"])
    if method in ("kd_lora", "budgeted"):
        params["compression"] = config["compression"]
    params |= {"perplexity": config["perplexity"], "icl": config["icl"]}
    return params | {"cell": spec}


def _collect(
    stages: dict[str, PrefectFuture | None], output_dir: str
) -> tuple[dict[str, Any], list[str]]:
    """Results of completed stages (paths absolute) and messages for the others."""
    wait([f for f in stages.values() if f is not None])
    results, errors = {}, []
    for name, future in stages.items():
        if future is None:
            continue
        state = future.state
        if state.is_completed():
            results[name] = absolutize(future.result(), output_dir)
        else:
            errors.append(f"{name}: {state.name}: {state.message}")
    return results, errors


def open_cell_run(ctx: GridContext, spec: dict[str, Any]) -> str:
    """The cell's MLflow run (a child of the grid's), with its training config as params."""
    kind = "scratch" if spec["method"] == "pretrain" else "cell"
    return tracking.open_run(
        ctx.experiment,
        spec["label"],
        ctx.tags(kind=kind, **spec),
        cell_params(ctx.config, spec),
        ctx.parent_run_id,
    )


def _training_runs(cells: list[tuple[GridContext, dict[str, Any]]]) -> list[dict[str, int]]:
    """What a top-k store must cover: each cell's seed and optimizer steps."""
    reads = []
    for cell_ctx, spec in cells:
        t = cell_ctx.cfg.train
        per_step = t.micro_batch_size * cell_ctx.train_data["seq_len"] * t.grad_accum_steps
        steps = max(1, t.total_tokens // (per_step * t.num_processes))
        reads.append(
            {
                "seed": spec["seed"],
                "steps": steps,
                "micro_batch_size": t.micro_batch_size,
                "grad_accum_steps": t.grad_accum_steps,
                "world_size": t.num_processes,
            }
        )
    return [dict(r) for r in {tuple(sorted(r.items())): r for r in reads}.values()]


def share_teacher_outputs(
    cells: list[tuple[GridContext, dict[str, Any]]], teacher: dict[str, Any], run_ids: dict
) -> dict[str, dict[str, Any]]:
    """DESIGN §6a for the distillation cells of one teacher (``kd.teacher_outputs``).

    ``shared`` cells train in one lockstep cohort on one teacher forward per batch (each
    cell's distill task then finds its finished run); with ``kd.teacher_top_k`` a top-k
    store is written once per (k, T) instead. Returns label -> store reference for the
    cells that read a store."""
    shared = [
        (cell_ctx, spec)
        for cell_ctx, spec in cells
        if spec["method"] != "pretrain" and cell_ctx.cfg.kd.teacher_outputs == "shared"
    ]
    exact = [(c, s) for c, s in shared if c.cfg.kd.teacher_top_k is None]
    stores: dict[str, dict[str, Any]] = {}
    groups: dict[tuple[int, float], list[tuple[GridContext, dict[str, Any]]]] = {}
    for cell_ctx, spec in shared:
        kd = cell_ctx.cfg.kd
        if kd.teacher_top_k is not None:
            groups.setdefault((kd.teacher_top_k, kd.temperature), []).append((cell_ctx, spec))
    for group in groups.values():
        ctx = group[0][0]
        store_task = configure_stage(
            teacher_outputs_task, ctx.output_dir, "teacher-outputs" in ctx.force
        )
        store_task = with_artifact_check(store_task, ctx.output_dir)
        t = ctx.cfg.train
        store = store_task(
            ctx.output_dir,
            teacher,
            ctx.train_data,
            ctx.tokenizer,
            ctx.config["kd"],
            _training_runs(group),
            batch_size=t.micro_batch_size,
            mixed_precision=t.mixed_precision,
        )
        stores |= {spec["label"]: store for _, spec in group}
    if exact:
        _run_cohort(exact, teacher, run_ids)
    return stores


def _run_cohort(
    cells: list[tuple[GridContext, dict[str, Any]]], teacher: dict[str, Any], run_ids: dict
) -> None:
    ctx = cells[0][0]
    grid = status.get(ctx.grid_id)
    if grid is not None:
        grid.stages_called += 1  # a stage outside ctx.task (not cached: skips finished cells)
    status.log(
        ctx.grid_id,
        f"distill-cohort of {teacher['name']}: {len(cells)} cells in lockstep, one teacher "
        "forward per batch (finished cells are skipped) ...",
    )
    members = [
        {
            **spec,
            "sections": training_sections(spec["method"], cell_ctx.config),
            "student": cell_ctx.student_ref,
            "mlflow_run_id": run_ids.get(spec["label"]),
        }
        for cell_ctx, spec in cells
    ]
    try:  # not cached by Prefect: it skips finished cells by their artifacts
        lanes = ctx.cfg.pipeline.cohort_lanes
        cohort_task(ctx.output_dir, teacher, members, ctx.train_data, ctx.tokenizer, lanes)
    except Exception as err:  # noqa: BLE001 - the cells then train on their own
        get_run_logger().warning("distill-cohort of %s failed (%r)", teacher["name"], err)


def run_cell(
    ctx: GridContext,
    spec: dict[str, Any],
    teacher: dict[str, Any] | None,
    run_id: str | None = None,
    teacher_store: dict[str, Any] | None = None,
    evaluations: tuple[str, ...] = ("perplexity", "icl", "speed"),
) -> dict:
    """distill -> compress -> perplexity / ICL / speed for one cell, tracked in one run
    (``run_id``: opened by :func:`open_cell_run` beforehand, else here; ``evaluations``:
    which of the three to run)."""
    c, out, label = ctx.config, ctx.output_dir, spec["label"]
    sections = training_sections(spec["method"], c)
    grid = status.get(ctx.grid_id)
    if grid is not None:
        grid.cell_started(label)
    run_id = run_id or open_cell_run(ctx, spec)
    cell = {**spec, "status": "failed", "mlflow_run_id": run_id}
    try:
        trained = ctx.task(distill_task).submit(
            out,
            label,
            spec["method"],
            spec["final_fraction"],
            spec["seed"],
            sections,
            ctx.student_ref,
            teacher,
            ctx.train_data,
            ctx.tokenizer,
            mlflow_run_id=run_id,
            teacher_store=teacher_store,
        )
        compressed = None
        if spec["method"] in ("kd_lora", "budgeted"):
            compressed = ctx.task(compress_task).submit(
                out,
                label,
                trained,
                c["compression"],
                c["lora"]["rank"],
                ctx.tokenizer,
                spec["method"],
            )
        model = compressed if compressed is not None else trained
        stages = {
            "distill": trained,
            "compress": compressed,
            "perplexity": ctx.task(perplexity_task).submit(
                out, label, model, ctx.val_data, c["perplexity"]
            )
            if "perplexity" in evaluations
            else None,
            "icl": ctx.task(icl_task).submit(out, label, model, ctx.tokenizer, c["icl"])
            if "icl" in evaluations
            else None,
            "speed": None
            if compressed is None or "speed" not in evaluations
            else ctx.task(speed_task).submit(
                out, label, compressed, ctx.student_ref, c["speed"], c["packing"]["seq_len"]
            ),
        }
        results, errors = _collect(stages, out)
        interrupt.check(label)  # a stage stopped by a signal: the cell is KILLED
        cell |= _cell_fields(results)
        cell["status"] = "ok" if not errors else "failed"
        if errors:
            cell["error"] = "; ".join(errors)
    except Interrupted as err:
        cell |= {"status": "killed", "error": str(err)}
        raise
    except Exception as err:  # noqa: BLE001 - recorded on the cell, the grid goes on
        cell["error"] = repr(err)
    finally:
        record_cell(run_id, cell)
        if grid is not None:
            grid.cell_finished(label)
    return cell


def record_cell(run_id: str, cell: dict[str, Any]) -> None:
    """The cell's MLflow bookkeeping; a failure there fails this cell only (issue 17)."""
    try:
        tracking.record_cell(run_id, cell)
    except Exception as err:  # noqa: BLE001 - the grid goes on without this cell
        cell["status"] = "failed"
        cell["error"] = f"record-cell: {err!r}" + (
            f"; {cell['error']}" if cell.get("error") else ""
        )
        try:
            tracking.close_run(run_id, failed=True, error=cell["error"])
        except Exception:  # noqa: BLE001, S110 - the tracking store itself is down
            pass


def run_reference(ctx: GridContext, kind: str, model: dict[str, Any]) -> dict[str, Any]:
    """Evaluate a reference model (a teacher, or the warm-started student)."""
    c, out = ctx.config, ctx.output_dir
    teacher = model["name"] if kind == "teacher" else model["from_teacher"]
    label = f"{teacher}/{kind}"
    spec = {"teacher": teacher, "method": kind, "final_fraction": None, "label": label}
    grid = status.get(ctx.grid_id)
    if grid is not None:
        grid.cell_started(label)
    params = {"cell": spec, "perplexity": c["perplexity"], "icl": c["icl"]}
    run_id = tracking.open_run(
        ctx.experiment, label, ctx.tags(kind=kind, **spec), params, ctx.parent_run_id
    )
    cell = {**spec, "status": "failed", "mlflow_run_id": run_id}
    try:
        results, errors = _collect(
            {
                "perplexity": ctx.task(perplexity_task).submit(
                    out, label, model, ctx.val_data, c["perplexity"]
                ),
                "icl": ctx.task(icl_task).submit(out, label, model, ctx.tokenizer, c["icl"]),
            },
            out,
        )
        cell |= _cell_fields(results)
        cell["status"] = "ok" if not errors else "failed"
        if errors:
            cell["error"] = "; ".join(errors)
        if kind == "teacher":
            cell["train"] = model.get("pretrain_summary") or {}
        interrupt.check(label)
    except Interrupted as err:
        cell |= {"status": "killed", "error": str(err)}
        raise
    except Exception as err:  # noqa: BLE001 - recorded on the cell, the grid goes on
        cell["error"] = repr(err)
    finally:
        record_cell(run_id, cell)
        if grid is not None:
            grid.cell_finished(label)
    return cell


def _cell_fields(results: dict[str, Any]) -> dict[str, Any]:
    """Stage results -> the cell schema the report reads."""
    trained, compressed = results.get("distill"), results.get("compress")
    trajectory = None
    if trained and trained.get("trajectory_path"):
        trajectory = json.loads(Path(trained["trajectory_path"]).read_text())
    return {
        "ppl": results["perplexity"]["perplexity"] if "perplexity" in results else None,
        "icl": results.get("icl"),
        "train": trained["summary"] if trained else {},
        "compression": compressed["summary"] if compressed else None,
        "speed": results.get("speed"),
        "trajectory": trajectory,
        "artifacts": {
            "model_dir": (compressed or trained or {}).get("model_dir"),
            "manifest_path": (compressed or {}).get("manifest_path"),
            "metrics_path": (trained or {}).get("metrics_path"),
            "run_dir": (trained or {}).get("run_dir"),
        },
    }
