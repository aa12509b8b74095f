"""Shared fixtures: tiny Mistral-style models and a tiny byte-level BPE tokenizer.

Everything is built from configs in memory: tests never download (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def make_mistral_config(
    num_layers: int = 4,
    hidden_size: int = 32,
    intermediate_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 300,
    **kwargs,
):
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=256,
        sliding_window=None,
        tie_word_embeddings=False,
        **kwargs,
    )


def make_mistral(seed: int = 0, **kwargs) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make_mistral_config(**kwargs))
    return model.eval()


# The real-ladder architecture matrix (README "Architectures"): each kind of checkpoint users
# bring, as a tiny random config. Qwen2's q/k/v carry biases by construction.
ARCHITECTURES: dict[str, tuple[str, dict]] = {
    "llama": ("llama", {"tie_word_embeddings": False}),
    "llama-tied": ("llama", {"tie_word_embeddings": True}),
    "llama-biased": (
        "llama",
        {"tie_word_embeddings": False, "attention_bias": True, "mlp_bias": True},
    ),
    "mistral": ("mistral", {"tie_word_embeddings": False, "sliding_window": None}),
    "qwen2": ("qwen2", {"tie_word_embeddings": False}),
    "qwen2-tied": ("qwen2", {"tie_word_embeddings": True}),
}


def make_arch_config(
    name: str,
    num_layers: int = 4,
    hidden_size: int = 32,
    intermediate_size: int = 64,
    vocab_size: int = 300,
    **overrides,
):
    """A tiny config of one :data:`ARCHITECTURES` entry (GQA 4/2 heads)."""
    from transformers import AutoConfig

    model_type, extra = ARCHITECTURES[name]
    return AutoConfig.for_model(
        model_type,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=0,
        bos_token_id=0,
        pad_token_id=1,
        **{**extra, **overrides},
    )


def make_checkpoint(name: str, path, seed: int = 0, **config_kwargs):
    """Save a random model of architecture ``name`` and the test tokenizer to ``path``
    with ``save_pretrained``, as a user's teacher directory would be. Returns ``path``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.no_grad():
        model = AutoModelForCausalLM.from_config(make_arch_config(name, **config_kwargs))
        for bias in (p for n, p in model.named_parameters() if n.endswith(".bias")):
            bias.normal_(0.0, 0.5)  # zero-initialised biases would hide a lost bias
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def make_compressed_student(arch: str, root: Path, kd_lora: bool = False):
    """(compressed model, plans) of a 2-layer student of a random ``arch`` teacher with
    random LoRA factors; modules cycle through the drop/svd/keep forms (all keep for a
    KD LoRA student)."""
    from bl_core.compression import compress_model
    from bl_core.config import CompressionConfig
    from bl_core.student import build_student, inject_gated_lora

    teacher = make_checkpoint(arch, root / f"{arch}-teacher", seed=1)
    model = build_student(teacher, num_layers=2)
    modules = inject_gated_lora(model, rank=4, lora_alpha=8, use_gates=not kd_lora)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for i, (_, m) in enumerate(modules):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=gen) * 0.05)
            if not kd_lora:
                m.gate_logits.copy_(torch.tensor([3.0, -1e4, 1.0, 2.0]))
                m.set_retention((0.0, 0.3, 0.8)[i % 3])  # drop, svd, keep
    plans = compress_model(model, CompressionConfig(svd_max_rank=8))
    return model.eval(), plans


@pytest.fixture
def tiny_mistral() -> torch.nn.Module:
    """A 4-layer, d=32 random Mistral-style causal LM (GQA 4/2 heads, SwiGLU, RoPE)."""
    return make_mistral()


_TOKENIZER_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Q:apple\nA:Apple\n\nQ:banana\nA:Banana",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789",
    "Python is a programming language that lets you work quickly.",
]


def make_tokenizer(vocab_size: int = 300):
    """A byte-level BPE tokenizer trained in memory, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TOKENIZER_TEXT * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|pad|>",
    )


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


# The files that take longest (CI durations, 2026-12-04: their tests' seconds in one
# process), scheduled first: under xdist's `--dist loadfile` (pyproject addopts) each file
# runs whole on one worker, so a long file collected last would leave the other worker idle
# at the end. The rest keep their collection order.
_LONGEST_FILES = (
    "tests/flows/test_reruns.py",  # ~250 s
    "tests/flows/test_reliability.py",  # ~150 s
    "tests/flows/test_grid.py",  # ~130 s
    "tests/bl_core/test_launch.py",  # ~55 s
    "tests/flows/test_ablations.py",  # ~50 s
    "tests/tasks/test_lanes.py",  # ~25 s
    "tests/flows/test_scaling.py",  # ~22 s
)


def pytest_collection_modifyitems(config, items):
    """Longest files first; a stable sort keeps every file's own test order."""
    rank = {name: i for i, name in enumerate(_LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))
