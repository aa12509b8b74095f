"""Everything about a run that can be known before any work, checked in one place.

Pydantic (``bl_core.config``) validates each field on its own; this module adds the rules
that need several fields or the files the config names: the student's depth against the
rung it is built from, one tokenizer for the whole ladder, ``packing.val_tokens`` against
``packing.seq_len``, every user path (named by its field, e.g. ``teachers[0].path``), the
ICL data files, and method/budget combinations that would silently produce nothing.

Every command calls it before writing anything; a problem is one :class:`ConfigError`
(a bad value) or :class:`InputError` (a missing or damaged file) naming the field and the
value, which the CLI prints as one line with exit status 2. Only file headers and small
JSON files are read here: no model, tokenizer or data set is loaded. (``bl plan``'s model
config is checked beside its command, in :mod:`bl_core.cli.plan`.)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bl_core.config import BudgetedLoRAConfig, TeacherConfig
from bl_core.errors import ConfigError, InputError
from bl_core.integrity import check_json_file, check_weights_dir

_REPO_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def validate_config(
    cfg: BudgetedLoRAConfig,
    *,
    grid: bool = True,
    selected_teachers: Iterable[str] | None = None,
) -> None:
    """Raise the first problem of ``cfg`` as a one-line :class:`ConfigError` /
    :class:`InputError`. ``grid``: also check the grid section (methods x budgets);
    ``selected_teachers``: rung names a command picked."""
    _check_grid(cfg, grid, selected_teachers)
    configs = _check_teacher_paths(cfg)
    _check_depth(cfg, configs)
    _check_sequences(cfg, configs)
    _check_tokenizers(cfg, configs)
    _check_corpus(cfg)
    check_icl_data(cfg.icl.data_dir, cfg.icl.tasks)


# -- grid ---------------------------------------------------------------------------------
def _check_grid(cfg: BudgetedLoRAConfig, grid: bool, selected: Iterable[str] | None) -> None:
    if not cfg.teachers:
        raise ConfigError("teachers=[]: the ladder is empty; name at least one teacher")
    names = [t.name for t in cfg.teachers]
    for name in selected or ():
        if name not in names:
            raise ConfigError(f"teacher {name!r} is not in the ladder (known: {', '.join(names)})")
    if not cfg.pipeline.seeds:
        raise ConfigError("pipeline.seeds=[]: name at least one training seed")
    if not grid:
        return
    methods = cfg.grid.methods
    if not methods:
        raise ConfigError("grid.methods=[]: name at least one of kd_full, kd_lora, budgeted")
    if "budgeted" in methods and not cfg.grid.budgets:
        raise ConfigError(
            "grid.budgets=[]: method budgeted needs at least one final fraction "
            "(e.g. --budgets 0.0 0.4), or drop budgeted from grid.methods"
        )


# -- teacher checkpoints ------------------------------------------------------------------
def _looks_like_hub_id(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 2 and all(p and set(p) <= _REPO_ID_CHARS for p in parts)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _check_teacher_paths(cfg: BudgetedLoRAConfig) -> dict[int, dict[str, Any]]:
    """``{index: config.json dict}`` of the local checkpoint teachers (all checked)."""
    configs = {}
    for i, teacher in enumerate(cfg.teachers):
        if teacher.path is None:
            continue
        field = f"teachers[{i}].path={teacher.path!r}"
        local = Path(teacher.path).expanduser()
        if not local.exists():
            if not _looks_like_hub_id(teacher.path):
                raise InputError(f"{field}: no such directory (nor is it a Hub id, org/name)")
            if _offline() and not _hub_cached(teacher.path, teacher.revision):
                raise InputError(
                    f"{field}: no such local directory, and HF_HUB_OFFLINE is set while the "
                    "Hub id is not in the local cache"
                )
            continue  # a Hub id: fetched (and checked) when the teacher is prepared
        configs[i] = check_model_dir(local, field)
    return configs


def _hub_cached(repo_id: str, revision: str | None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return True
    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return isinstance(found, str)


def check_model_dir(path: str | Path, field: str) -> dict[str, Any]:
    """A local Hugging Face model directory: ``config.json`` with a ``model_type`` and
    complete safetensors weights. Returns the config dict."""
    path = Path(path)
    if path.is_file():
        raise InputError(f"{field}: is a file, not a model directory")
    if not path.is_dir():
        raise InputError(f"{field}: no such directory")
    if not (path / "config.json").is_file():
        raise InputError(f"{field}: not a model directory (no config.json)")
    config = check_json_file(path / "config.json", f"{field}: config file")
    if "model_type" not in config:
        raise InputError(f"{field}: {str(path / 'config.json')!r} has no 'model_type'")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise InputError(f"{field}: no weights (*.safetensors) in the directory")
    try:
        check_weights_dir(path)
    except InputError as err:
        raise InputError(f"{field}: {err}") from None
    return config


# -- cross-field rules --------------------------------------------------------------------
def _arch_numbers(teacher: TeacherConfig, config: dict[str, Any] | None, vocab: int) -> dict:
    if teacher.arch is not None:
        a = teacher.arch
        return {
            "layers": a.num_layers,
            "hidden": a.hidden_size,
            "heads": a.num_heads,
            "kv_heads": a.num_kv_heads,
            "ffn": a.intermediate_size,
            "vocab": vocab,
            "tied": a.tie_word_embeddings,
            "max_positions": a.max_position_embeddings,
        }
    c = config or {}
    heads = c.get("num_attention_heads") or 1
    return {
        "layers": c.get("num_hidden_layers"),
        "hidden": c.get("hidden_size") or 0,
        "heads": heads,
        "kv_heads": c.get("num_key_value_heads") or heads,
        "ffn": c.get("intermediate_size") or 0,
        "vocab": c.get("vocab_size") or vocab,
        "tied": bool(c.get("tie_word_embeddings", False)),
        "max_positions": c.get("max_position_embeddings"),
    }


def _num_params(n: dict[str, Any]) -> int:
    """The parameter count of a Llama/Mistral-style decoder (for picking the smallest rung)."""
    d, layers = n["hidden"], n["layers"] or 0
    kv = d // max(n["heads"], 1) * n["kv_heads"]
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * n["ffn"] + 2 * d
    return n["vocab"] * d * (1 if n["tied"] else 2) + layers * per_layer + d


def _rungs(cfg: BudgetedLoRAConfig, configs: dict[int, dict]) -> list[tuple[int, dict]]:
    """``(index, numbers)`` of the rungs whose architecture is known now."""
    rungs = []
    for i, teacher in enumerate(cfg.teachers):
        if teacher.arch is None and i not in configs:
            continue  # a Hub id not fetched yet
        rungs.append((i, _arch_numbers(teacher, configs.get(i), cfg.tokenizer.vocab_size)))
    return rungs


def _check_depth(cfg: BudgetedLoRAConfig, configs: dict[int, dict]) -> None:
    rungs = _rungs(cfg, configs)
    if len(rungs) < len(cfg.teachers) or not rungs:
        return  # the smallest rung is not known before the Hub teachers are fetched
    i, smallest = min(rungs, key=lambda r: _num_params(r[1]))
    depth = smallest["layers"]
    if depth is not None and cfg.student.num_layers > depth:
        raise ConfigError(
            f"student.num_layers={cfg.student.num_layers}: more than the {depth} layers of "
            f"teachers[{i}] ({cfg.teachers[i].name!r}), the smallest rung, which the student "
            "is built from"
        )


def _check_sequences(cfg: BudgetedLoRAConfig, configs: dict[int, dict]) -> None:
    p = cfg.packing
    if p.val_tokens < p.seq_len:
        raise ConfigError(
            f"packing.val_tokens={p.val_tokens}: fewer than packing.seq_len={p.seq_len}, so "
            "the validation set would hold no sequence"
        )
    for i, numbers in _rungs(cfg, configs):
        limit = numbers["max_positions"]
        if isinstance(limit, int) and p.seq_len > limit:
            where = "arch.max_position_embeddings" if cfg.teachers[i].arch else "path's config"
            raise ConfigError(
                f"packing.seq_len={p.seq_len}: longer than teachers[{i}].{where}={limit}"
            )


def _vocabulary(model_dir: Path) -> str | None:
    """A fingerprint of ``tokenizer.json``'s vocabulary (``None``: no tokenizer.json)."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    data = check_json_file(path, "tokenizer file")
    vocab = (data.get("model") or {}).get("vocab")
    added = sorted((t.get("content"), t.get("id")) for t in data.get("added_tokens") or [])
    digest = json.dumps([vocab, added], sort_keys=True, default=str).encode()
    return hashlib.sha256(digest).hexdigest()


def _check_tokenizers(cfg: BudgetedLoRAConfig, configs: dict[int, dict]) -> None:
    """Every checkpoint rung (and ``tokenizer.path``) shares one vocabulary (DESIGN §1)."""
    sources: list[tuple[str, Path]] = []
    if cfg.tokenizer.path is not None:
        local = Path(cfg.tokenizer.path).expanduser()
        field = f"tokenizer.path={cfg.tokenizer.path!r}"
        if local.is_file():
            raise InputError(f"{field}: is a file, not a tokenizer directory")
        if local.is_dir():
            if not any((local / name).is_file() for name in _TOKENIZER_FILES):
                raise InputError(f"{field}: has none of {', '.join(_TOKENIZER_FILES)}")
            sources.append((field, local))
        elif not _looks_like_hub_id(cfg.tokenizer.path):
            raise InputError(f"{field}: no such directory (nor is it a Hub id, org/name)")
    for i in sorted(configs):
        path = Path(cfg.teachers[i].path).expanduser()
        field = f"teachers[{i}].path={cfg.teachers[i].path!r}"
        if cfg.tokenizer.path is None and not any((path / n).is_file() for n in _TOKENIZER_FILES):
            raise InputError(f"{field}: no tokenizer files ({', '.join(_TOKENIZER_FILES)})")
        sources.append((field, path))
    known = [(field, _vocabulary(path)) for field, path in sources]
    known = [(field, v) for field, v in known if v is not None]
    for field, vocab in known[1:]:
        if vocab != known[0][1]:
            raise InputError(
                f"{field}: its tokenizer's vocabulary differs from {known[0][0]}'s; every "
                "rung of a ladder must share one tokenizer"
            )


# -- data ---------------------------------------------------------------------------------
def _check_corpus(cfg: BudgetedLoRAConfig) -> None:
    c = cfg.corpus
    if c.source in ("files", "jsonl"):
        from bl_core.corpus import _resolve_files

        pattern, kind = ("**/*.txt", "text") if c.source == "files" else ("**/*.jsonl", "JSONL")
        try:
            _resolve_files(c.path, pattern, kind)
        except InputError as err:
            raise InputError(f"corpus.path={c.path!r}: {err}") from None
    elif c.source == "hf" and c.path.startswith((".", "/", "~")):
        if not Path(c.path).expanduser().exists():
            raise InputError(f"corpus.path={c.path!r}: no such file or directory")


def check_icl_data(data_dir: str | None, tasks: Iterable[str] | None) -> None:
    """``icl.data_dir``: a directory holding ``<task>.json`` for every selected task (all 19
    when ``icl.tasks`` is unset)."""
    from bl_core.probes import _find_fv_file, check_tasks

    names = check_tasks(tasks)
    if data_dir is None:
        return
    root = Path(data_dir).expanduser()
    field = f"icl.data_dir={data_dir!r}"
    if root.is_file():
        raise InputError(f"{field}: is a file, not a directory")
    if not root.is_dir():
        raise InputError(f"{field}: no such directory")
    missing = []
    for name in names:
        try:
            _find_fv_file(root, name)
        except InputError:
            missing.append(f"{name}.json")
    if missing:
        raise InputError(
            f"{field}: missing {len(missing)} of the {len(names)} task files "
            f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})"
        )


# -- other commands -----------------------------------------------------------------------
def check_output_dir(path: str | Path, field: str = "--out") -> None:
    """An output directory that can be created (not a file, nor below one)."""
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{field}={str(path)!r}: {str(parent)!r} is a file")
            if not os.access(parent, os.W_OK):
                raise InputError(f"{field}={str(path)!r}: {str(parent)!r} is not writable")
            return


def check_model_path(path: str | Path, field: str) -> None:
    """A model a command reads (``bl eval MODEL``): a local directory of complete weights."""
    path = Path(path).expanduser()
    if not path.exists():
        if _looks_like_hub_id(str(path)):
            return  # a Hub id: resolved by the command
        raise InputError(f"{field}: model directory {str(path)!r} does not exist")
    if path.is_file():
        raise InputError(f"{field}={str(path)!r}: is a file, not a model directory")
    manifest = path / "bl_manifest.json"
    if manifest.is_file():
        check_json_file(manifest, "manifest")
    elif not (path / "config.json").is_file():
        raise InputError(
            f"{field}={str(path)!r}: neither a Hugging Face model dir (config.json) nor a "
            "compressed student (bl_manifest.json)"
        )
    else:
        check_json_file(path / "config.json", "config file")
    check_weights_dir(path)


def validate_eval(
    model: str,
    ppl_data: str | None,
    tokenizer: str | None,
    cfg: BudgetedLoRAConfig,
    run_icl: bool,
    out: str | None,
    lm_eval_include: str | None = None,
) -> None:
    """``bl eval``'s inputs, before a model is loaded (the tokenizer first, as it loads)."""
    if lm_eval_include is not None and not Path(lm_eval_include).expanduser().is_dir():
        raise InputError(f"--lm-eval-include={lm_eval_include!r}: no such directory")
    if ppl_data is not None:
        path = Path(ppl_data).expanduser()
        if not path.is_dir():
            what = "is a file, not a packed directory" if path.exists() else "no such directory"
            raise InputError(f"--ppl-data={ppl_data!r}: {what}")
    if tokenizer is not None:
        path = Path(tokenizer).expanduser()
        if path.is_file():
            raise InputError(f"--tokenizer={tokenizer!r}: is a file, not a tokenizer directory")
        if not path.exists() and not _looks_like_hub_id(tokenizer):
            raise InputError(f"--tokenizer={tokenizer!r}: no such directory")
        if path.is_dir() and not any((path / n).is_file() for n in _TOKENIZER_FILES):
            raise InputError(
                f"--tokenizer: cannot load a tokenizer from {tokenizer!r}: none of "
                f"{', '.join(_TOKENIZER_FILES)}"
            )
    check_model_path(model, "MODEL")
    if run_icl:
        check_icl_data(cfg.icl.data_dir, cfg.icl.tasks)
    if out is not None:
        if Path(out).is_dir():
            raise InputError(f"--out={out!r}: is a directory; give a FILE.json")
        try:
            check_output_dir(Path(out).parent, "--out")
        except InputError as err:  # name the value given, not its parent
            problem = str(err).split(": ", 1)[1]
            raise InputError(f"--out={out!r}: {problem}") from None
