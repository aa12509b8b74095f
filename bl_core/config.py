"""One typed, validated configuration for the whole method (DESIGN §2-§9).

Every section is a frozen pydantic model with ``extra="forbid"``, so a typo in a
YAML key is an error, not a silently ignored setting. Defaults live only here.
User-facing loaders (:func:`load_config`, :func:`config_from_dict`,
:func:`apply_overrides`) turn pydantic's errors into one :class:`ConfigError`
whose lines read ``budget.final_fraction=1.3: must be in [0, 1]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from bl_core.errors import ConfigError
from bl_core.io import atomic_write_text

# DESIGN §3: the 7 linear projections of a Llama/Mistral/Qwen2 decoder layer.
TARGET_MODULES: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)
LayerSelection = Literal["first", "truncated", "middle", "last", "mixed"]
Method = Literal["pretrain", "kd_full", "kd_lora", "budgeted"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class StudentConfig(_Section):
    """Student construction (DESIGN §2)."""

    num_layers: int = Field(6, ge=1)
    layer_selection: LayerSelection = "mixed"


class LoRAConfig(_Section):
    """Gated LoRA modules (DESIGN §3). ``scale = lora_alpha / rank``."""

    rank: int = Field(128, ge=1)
    lora_alpha: float = Field(256.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    gate_init_logit: float = 3.0
    targets: tuple[str, ...] = TARGET_MODULES

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, targets: tuple[str, ...]) -> tuple[str, ...]:
        if not targets:
            raise ValueError(f"must name at least one of {', '.join(TARGET_MODULES)}")
        unknown = [t for t in targets if t not in TARGET_MODULES]
        if unknown:
            raise ValueError(
                f"unknown target module(s) {', '.join(unknown)}; known: {', '.join(TARGET_MODULES)}"
            )
        if len(set(targets)) != len(targets):
            raise ValueError("names a module more than once")
        return targets

    @property
    def scale(self) -> float:
        return self.lora_alpha / self.rank


class BudgetConfig(_Section):
    """Budget schedule and controller (DESIGN §4)."""

    final_fraction: float = Field(0.4, ge=0, le=1)
    schedule_start: float = Field(0.1, ge=0, le=1)
    schedule_end: float = Field(0.3, ge=0, le=1)
    ema_beta: float = Field(0.9, ge=0, lt=1)
    removal_score: Literal["cost"] = "cost"

    @model_validator(mode="after")
    def _window_ordered(self) -> BudgetConfig:
        if self.schedule_start > self.schedule_end:
            raise ValueError(
                f"schedule_start={self.schedule_start} > schedule_end={self.schedule_end}: "
                "the decay window needs schedule_start <= schedule_end"
            )
        return self


class CompressionConfig(_Section):
    """Post-training compression thresholds (DESIGN §5). ``tau_drop`` is also the
    controller's clamp: a retention below it becomes exactly 0 (DESIGN §4)."""

    tau_drop: float = Field(0.05, ge=0, le=1)
    tau_svd: float = Field(0.5, gt=0, le=1)
    tau_rank: float = Field(0.5, gt=0, lt=1)
    svd_max_rank: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> CompressionConfig:
        if self.tau_drop > self.tau_svd:
            raise ValueError(
                f"tau_drop={self.tau_drop} > tau_svd={self.tau_svd}: thresholds must satisfy "
                "tau_drop <= tau_svd"
            )
        return self


class KDConfig(_Section):
    """Distillation objective (DESIGN §6): L = kd_weight * T^2 KL + (1 - kd_weight) CE.

    ``teacher_outputs`` (DESIGN §6a): ``online`` runs the teacher in every cell's every
    step; ``shared`` computes them once per teacher for all of its cells — exactly, by
    training the cells in lockstep on one teacher forward per batch (``teacher_top_k``
    unset), or approximately from a store of the teacher's top-k logits per position
    (``teacher_top_k = k``; the KD term is then the KL over the k tokens and one tail).
    """

    temperature: float = Field(3.0, gt=0)
    kd_weight: float = Field(0.8, ge=0, le=1)
    chunk_size: int = Field(4096, ge=1)
    teacher_outputs: Literal["online", "shared"] = "shared"
    teacher_top_k: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _top_k_needs_shared(self) -> KDConfig:
        if self.teacher_top_k is not None and self.teacher_outputs != "shared":
            raise ValueError(
                f"teacher_top_k={self.teacher_top_k} needs teacher_outputs='shared' (a store "
                f"of top-k outputs); got teacher_outputs={self.teacher_outputs!r}"
            )
        return self

    @property
    def teacher_outputs_form(self) -> str:
        """How the cells get the teacher's outputs, as recorded with every result."""
        if self.teacher_outputs == "online":
            return "online"
        if self.teacher_top_k is None:
            return "shared (exact, lockstep cohort)"
        return f"shared (sparse top-{self.teacher_top_k} store)"


class CorpusConfig(_Section):
    """Where documents come from (DESIGN §8). ``source="embedded"`` needs no download.

    ``document_unit`` (``files`` only): one document per file, or per blank-line block.
    ``synthetic_icl_fraction``: share of *documents* that are synthetic Q:/A: episodes,
    generated from ``synthetic_icl_seed`` (see ``bl_core.corpus``).
    """

    source: Literal["embedded", "files", "jsonl", "hf"] = "embedded"
    path: str | None = None
    document_unit: Literal["file", "block"] = "file"
    text_field: str = "text"
    id_field: str | None = None
    hf_config_name: str | None = None
    hf_split: str = "train"
    streaming: bool = False
    max_documents: int | None = Field(None, ge=1)
    synthetic_icl_fraction: float = Field(0.0, ge=0, lt=1)
    synthetic_icl_seed: int = 0
    eval_per_10k: int = Field(20, ge=1, le=10_000)

    @model_validator(mode="after")
    def _path_given(self) -> CorpusConfig:
        if self.source != "embedded" and not self.path:
            raise ValueError(f"source={self.source!r} needs corpus.path")
        return self


class TokenizerConfig(_Section):
    """``path=None`` trains a byte-level BPE on the training slice (embedded ladder)."""

    path: str | None = None
    vocab_size: int = Field(4096, ge=260)


class PackingConfig(_Section):
    seq_len: int = Field(1024, ge=2)
    val_tokens: int = Field(10_000_000, ge=1)


class PerplexityConfig(_Section):
    batch_size: int = Field(8, ge=1)
    max_tokens: int | None = Field(None, ge=1)


class ICLConfig(_Section):
    """In-context-learning probes (DESIGN §9)."""

    tasks: tuple[str, ...] | None = None
    data_dir: str | None = None
    num_shots: int = Field(10, ge=0)
    seeds: tuple[int, ...] = (0, 1, 2)
    items_per_task: int = Field(100, ge=1)
    max_new_tokens: int = Field(8, ge=1)
    batch_size: int = Field(16, ge=1)
    query_prefix: str = "Q:"
    answer_prefix: str = "A:"

    @field_validator("seeds")
    @classmethod
    def _some_seeds(cls, seeds: tuple[int, ...]) -> tuple[int, ...]:
        if not seeds:
            raise ValueError("needs at least one demonstration seed")
        if len(set(seeds)) != len(seeds):
            raise ValueError("names a seed more than once")
        return seeds


class TrainConfig(_Section):
    """One training run (paper §4): AdamW, cosine LR with 3% warmup capped at 2000 steps,
    zero weight decay, clipping at 1.0; the step count follows from the token budget."""

    total_tokens: int = Field(2_550_000_000, ge=1)
    micro_batch_size: int = Field(8, ge=1)
    grad_accum_steps: int = Field(1, ge=1)
    learning_rate: float = Field(3e-4, gt=0)
    warmup_fraction: float = Field(0.03, ge=0, lt=1)
    warmup_max_steps: int = Field(2000, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 0
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    num_processes: int = Field(1, ge=1)


class PretrainConfig(TrainConfig):
    """Teacher pretraining (embedded ladders): a :class:`TrainConfig` plus the copy-snippet
    curriculum of DESIGN §1a (``bl_core.curriculum``). ``curriculum_span``: the span length
    ``L``; ``curriculum_mix``: the initial share ``m0`` of snippet tokens, annealed
    linearly to 0 over pretraining. Defaults as published for the Bi-Induct teachers."""

    learning_rate: float = Field(1e-3, gt=0)
    curriculum: Literal["natural", "induction", "anti", "balanced"] = "natural"
    curriculum_span: int = Field(20, ge=1)
    curriculum_mix: float = Field(0.5, ge=0, le=1)


class ModelArchConfig(_Section):
    """A Mistral-style architecture (pre-norm, RoPE, SwiGLU, GQA) to pretrain from scratch."""

    hidden_size: int = Field(128, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(384, ge=1)
    max_position_embeddings: int = Field(1024, ge=2)
    # The LM head is the input embedding (as in SmolLM, Qwen2.5-0.5B, Llama-3.2-1B). A tiny
    # model then needs no per-token embedding/unembedding alignment to copy a token, which
    # brings its induction phase change within the embedded ladder's budget; the tiny preset
    # still keeps it off (docs/RESULTS.md §2).
    tie_word_embeddings: bool = False

    @model_serializer(mode="wrap")
    def _omit_untied(self, handler: Any) -> dict[str, Any]:
        # Added after grids were stored: written only when set, so an untied rung dumps (and
        # keys its stages) exactly as before the field existed, and its stores stay valid.
        data = handler(self)
        if not self.tie_word_embeddings:
            data.pop("tie_word_embeddings", None)
        return data

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelArchConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not divisible by num_kv_heads={self.num_kv_heads}"
            )
        return self


class TeacherConfig(_Section):
    """A rung of the teacher ladder: a checkpoint (``path``: a local directory or a Hugging
    Face Hub id ``org/name``, at ``revision`` if given) or an architecture pretrained from
    scratch on the corpus (``arch``), exactly one of the two. Checkpoints are loaded with
    ``from_pretrained`` and never run remote code."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    path: str | None = None
    revision: str | None = Field(None, min_length=1)
    arch: ModelArchConfig | None = None
    pretrain_tokens: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> TeacherConfig:
        if (self.path is None) == (self.arch is None):
            raise ValueError(f"teacher {self.name!r} needs exactly one of path or arch")
        if self.revision is not None and self.path is None:
            raise ValueError(f"teacher {self.name!r}: revision applies to a Hub id path only")
        return self


class GridConfig(_Section):
    """What the full grid compares (DESIGN §1)."""

    methods: tuple[Method, ...] = ("kd_full", "kd_lora", "budgeted")
    budgets: tuple[float, ...] = (0.0, 0.4)
    scratch_reference: bool = False

    @field_validator("budgets")
    @classmethod
    def _budgets_in_range(cls, budgets: tuple[float, ...]) -> tuple[float, ...]:
        bad = [b for b in budgets if not 0.0 <= b <= 1.0]
        if bad:
            raise ValueError(f"final fractions {bad} are outside [0, 1]")
        return budgets


class SpeedConfig(_Section):
    """Measured inference speed of a compressed student vs its dense twin (DESIGN §5).
    ``num_tokens`` and ``seq_len`` default to ``packing.seq_len``."""

    num_tokens: int | None = Field(None, ge=1)
    seq_len: int | None = Field(None, ge=2)
    gen_tokens: int = Field(32, ge=1)
    prompt_len: int = Field(32, ge=1)
    repeats: int = Field(5, ge=1)
    warmup: int = Field(1, ge=0)


class TrackingConfig(_Section):
    """Experiment tracking. ``uri=None``: a SQLite store under the grid's output dir."""

    uri: str | None = None
    experiment: str | None = None


class PipelineConfig(_Section):
    """How the Prefect grid runs its stages."""

    max_workers: int = Field(1, ge=1)
    # CPU processes a teacher's lockstep cohort is split over, each on cores / lanes torch
    # threads (tasks/lanes.py); 1: the cohort in the grid's process. Ignored on a GPU.
    cohort_lanes: int = Field(1, ge=1)
    retries: int = Field(2, ge=0)
    retry_delay_s: float = Field(30.0, ge=0)
    seeds: tuple[int, ...] = (0,)


class BudgetedLoRAConfig(_Section):
    """The resolved configuration saved beside every checkpoint."""

    student: StudentConfig = StudentConfig()
    lora: LoRAConfig = LoRAConfig()
    budget: BudgetConfig = BudgetConfig()
    compression: CompressionConfig = CompressionConfig()
    kd: KDConfig = KDConfig()
    corpus: CorpusConfig = CorpusConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    packing: PackingConfig = PackingConfig()
    perplexity: PerplexityConfig = PerplexityConfig()
    icl: ICLConfig = ICLConfig()
    train: TrainConfig = TrainConfig()
    pretrain: PretrainConfig = PretrainConfig()
    teachers: tuple[TeacherConfig, ...] = ()
    grid: GridConfig = GridConfig()
    speed: SpeedConfig = SpeedConfig()
    tracking: TrackingConfig = TrackingConfig()
    pipeline: PipelineConfig = PipelineConfig()

    @field_validator("teachers")
    @classmethod
    def _unique_teacher_names(cls, teachers: tuple[TeacherConfig, ...]) -> tuple:
        names = [t.name for t in teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be unique, got {names}")
        return teachers


def _format_error(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        msg = e["msg"].removeprefix("Value error, ")
        value = e.get("input")
        if e["type"] in ("missing", "model_type") or isinstance(value, dict):
            lines.append(f"{loc}: {msg}")
        else:
            lines.append(f"{loc}={value!r}: {msg}")
    # One line (issue 17): the CLI prints it after "bl <command>: error: ".
    return "invalid configuration: " + "; ".join(lines)


def config_from_dict(data: dict[str, Any] | None) -> BudgetedLoRAConfig:
    """Validate a nested dict; raise :class:`ConfigError` naming every bad field."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"configuration must be a mapping, got {type(data).__name__}")
    try:
        return BudgetedLoRAConfig.model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def load_config(path: str | Path) -> BudgetedLoRAConfig:
    """Read a YAML file and validate it; errors name the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    try:
        return config_from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def apply_overrides(config: BudgetedLoRAConfig, overrides: dict[str, Any]) -> BudgetedLoRAConfig:
    """Return a new config with dotted-key overrides (``{"budget.final_fraction": 0.0}``)."""
    data = config.model_dump()
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            if not isinstance(node.get(key), dict):
                raise ConfigError(f"{dotted}: no such configuration section {key!r}")
            node = node[key]
        if leaf not in node:
            raise ConfigError(f"{dotted}: no such configuration field")
        node[leaf] = value
    return config_from_dict(data)


def save_config(config: BudgetedLoRAConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
