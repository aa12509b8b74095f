"""The compressed student on disk: a Hugging Face model directory (DESIGN §5.3).

    out_dir/
      config.json              the base architecture's config + ``compressed_modules``
                               (per adapted module: dense or low_rank, rank, bias) + auto_map
      model.safetensors        weights (a tied LM head once), names as in the project
      generation_config.json   tokenizer files
      modeling_budgeted_lora.py  the standalone modeling code auto_map names
      README.md                model card: budget, realised F, structure, speedups
      bl_manifest.json         provenance: every module's plan (alpha, ranks), the summary

A student whose every module is dense (a merged KD LoRA student) is written as a plain
stock checkpoint (``model_type`` llama/mistral/qwen2, no auto_map, no modeling file).
Loading goes through transformers' Auto classes, which :mod:`bl_core.hf` registers, so
the project and a plain-transformers user build the same model. Directories written by
earlier versions (stock ``config.json`` + safetensors + a version-1 manifest) still load,
and :func:`convert_legacy` (``bl export``) rewrites them in this format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from bl_core.compression import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    WEIGHTS_NAME,
    ModulePlan,
    load_compressed,
    plans_from_manifest,
    read_manifest,
)
from bl_core.errors import InputError
from bl_core.hf import auto_map
from bl_core.hf.modeling_budgeted_lora import ARCHITECTURES
from bl_core.io import atomic_directory, atomic_write_json, atomic_write_text, default_mode
from bl_core.model_card import model_card
from bl_core.weights import assign_state, assign_weights, weights_state

MANIFEST_VERSION = 2  # 1: stock config.json, structure in the manifest only
_PREFIX = "budgeted_lora_"
# Keys of a config's dict that describe the file, not the architecture.
_DROPPED_KEYS = ("model_type", "auto_map", "architectures", "transformers_version", "_name_or_path")


def base_model_type(config: PretrainedConfig) -> str:
    """``mistral`` for a Mistral student, compressed (``budgeted_lora_mistral``) or not."""
    return config.model_type.removeprefix(_PREFIX)


def compressed_modules(plans: Sequence[ModulePlan]) -> dict[str, dict[str, Any]]:
    """The ``config.json`` field: per module its deployed form, rank and bias."""
    forms = {"keep": "dense", "svd": "low_rank", "drop": "low_rank"}
    return {p.name: {"form": forms[p.form], "rank": p.rank, "bias": p.bias} for p in plans}


def export_config(config: PretrainedConfig, plans: Sequence[ModulePlan]) -> PretrainedConfig:
    """The exported student's config: the stock one when every module is dense, else the
    architecture's compressed config (own model_type, ``compressed_modules``, auto_map)."""
    base_type = base_model_type(config)
    fields = {k: v for k, v in config.to_dict().items() if k not in _DROPPED_KEYS}
    fields.pop("compressed_modules", None)
    if all(p.form == "keep" for p in plans):
        return AutoConfig.for_model(base_type, **fields)
    if base_type not in ARCHITECTURES:
        raise InputError(
            f"cannot export a compressed {base_type!r} student: the Hugging Face export "
            f"supports {', '.join(sorted(ARCHITECTURES))}"
        )
    config_cls = ARCHITECTURES[base_type][0]
    return config_cls(
        **fields, compressed_modules=compressed_modules(plans), auto_map=auto_map(base_type)
    )


def empty_export(config: PretrainedConfig) -> PreTrainedModel:
    """The exported architecture with parameters on the meta device (buffers real)."""
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config)


def to_hf_model(model: PreTrainedModel, plans: Sequence[ModulePlan]) -> PreTrainedModel:
    """The compressed ``model`` (after :func:`~bl_core.compression.compress_model`) as the
    exported class, sharing its weights; every weight must fit the exported structure."""
    hf_model = empty_export(export_config(model.config, plans))
    assign_state(hf_model, weights_state(model), "compressed student")
    hf_model.generation_config = model.generation_config
    return hf_model.eval()


def build_manifest(
    plans: Sequence[ModulePlan], summary: dict[str, Any], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Provenance beside the weights: the summary (Table 8 figures) and every plan."""
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "summary": summary,
        "modules": [asdict(p) | {"rank": p.rank} for p in plans],
        **(extra or {}),
    }


def save_export(
    model: PreTrainedModel,
    plans: Sequence[ModulePlan],
    out_dir: str | Path,
    manifest: dict[str, Any],
    tokenizer: Any | None = None,
    speed: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the Hugging Face directory of a compressed student atomically: it appears
    complete or not at all. ``speed``: measured speedups for the model card, if known."""
    out_dir = Path(out_dir)
    hf_model = to_hf_model(model, plans)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        hf_model.save_pretrained(tmp)  # config, generation config, weights, modeling file
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / MANIFEST_NAME, manifest)
        atomic_write_text(tmp / "README.md", model_card(hf_model.config, manifest, speed))
        _make_readable(tmp)
    return out_dir


def _make_readable(directory: Path) -> None:
    """Modes as ``save_pretrained`` gives them under the umask (the temporary directory
    and files are private): a model directory is meant to be served and shared."""
    directory.chmod(default_mode(directory=True))
    for path in directory.iterdir():
        path.chmod(default_mode(directory=path.is_dir()))


def load_export(path: str | Path, dtype: str | torch.dtype = "auto") -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained`` of an exported directory, with the project's
    classes and no remote code; a weight that does not fit the structure is an error."""
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            path, trust_remote_code=False, dtype=dtype, output_loading_info=True
        )
    except (OSError, ValueError) as err:
        raise InputError(f"cannot load the model in {str(path)!r}: {err}") from None
    bad = {k: sorted(v)[:5] for k, v in info.items() if k != "error_msgs" and v}
    if bad or info.get("error_msgs"):
        raise InputError(f"{str(path)!r}: weights do not match config.json: {bad}")
    return model


def load_legacy(path: str | Path) -> PreTrainedModel:
    """A version-1 directory (stock config.json, structure in the manifest), rebuilt as the
    exported class."""
    path = Path(path)
    plans = plans_from_manifest(read_manifest(path))
    config = export_config(AutoConfig.from_pretrained(path, trust_remote_code=False), plans)
    return assign_weights(empty_export(config), path / WEIGHTS_NAME)


def is_legacy_dir(path: str | Path) -> bool:
    return read_manifest(path).get("version", 1) < MANIFEST_VERSION


def is_exported_dir(path: str | Path) -> bool:
    """A compressed student directory in the current format."""
    return (Path(path) / MANIFEST_NAME).is_file() and not is_legacy_dir(path)


def convert_legacy(
    src: str | Path,
    out_dir: str | Path,
    speed: dict[str, Any] | None = None,
    overwrite: bool = False,
    final_fraction: float | None = None,
) -> Path:
    """Rewrite a compressed student directory (any version) in the current format, with
    its tokenizer, manifest and (optionally) measured speedups and the requested budget
    ``final_fraction`` (which earlier directories do not record) in the model card."""
    src = Path(src)
    manifest = read_manifest(src) | {"version": MANIFEST_VERSION}
    if final_fraction is not None:
        manifest["final_fraction"] = final_fraction
    tokenizer = None
    if (src / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(src)
    model = load_compressed(src)
    plans = plans_from_manifest(manifest)
    return save_export(model, plans, out_dir, manifest, tokenizer, speed, overwrite)
