"""Whether the embedded ladder's architectures form an induction head, and how fast
(issue "Fidelity": why the teachers score no ICL). Two modes.

Pure copy data, from scratch::

    python benchmarks/induction.py                            # lr 2e-3, 600 steps, 2 rows
    python benchmarks/induction.py --tie --rows 16 --seq-len 128 --lr 3e-3 --steps 400

Each row is ``[20 random tokens, SEP, the same 20 tokens]`` repeated to ``--seq-len``
tokens, ``--rows`` rows a step, AdamW without decay (``--warmup`` linear warm-up steps).
Every ``--every`` steps it prints the training loss (a uniform guess is ln 2046 = 7.62
nats) and the accuracy of greedy predictions on the second copies of fresh rows. Copying
well above 0 means the induction phase change has happened. The model is tiny-s of
``bl_core/presets/tiny.yaml`` (Mistral, hidden 96, 4 layers, read from the preset; ``--tie``
ties its LM head to the input embedding), built from a config: nothing is downloaded.

A finished grid's models, on held-out text::

    python benchmarks/induction.py --grid outputs/tiny

prints the in-context copy accuracy of every teacher, warm start and compressed student in
the grid's stage store: ``[S SEP S]`` snippets (span 20, half the tokens) written into the
first 16 validation rows, greedy predictions of copy tokens 2..20. A model that copies from
its context scores near 1; unigram statistics alone give ~0.1-0.2.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from bl_core.checkpoint import load_causal_lm
from bl_core.curriculum import insert_snippets
from bl_core.ladder import arch_to_config
from bl_core.packing import PackedDataset
from bl_core.preset_files import resolve_config
from bl_core.tokenizer import load_tokenizer, separator_id

VOCAB, SEP, SPAN = 2048, 1, 20  # the preset's vocabulary; the curriculum's span


def copy_rows(batch: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    blocks = seq_len // (2 * SPAN + 1) + 1
    spans = torch.randint(2, VOCAB, (batch, blocks, SPAN), generator=generator)
    sep = torch.full((batch, blocks, 1), SEP)
    return torch.cat([spans, sep, spans], dim=2).reshape(batch, -1)[:, :seq_len]


def _copy_hits(pred: torch.Tensor, rows: torch.Tensor, starts: list[int]) -> tuple[int, int]:
    """Greedy predictions of copy tokens 2..20 of the snippets starting at ``starts``."""
    hits = total = 0
    for start in starts:
        second = slice(start + SPAN + 1, start + 2 * SPAN)
        target = slice(start + SPAN + 2, start + 2 * SPAN + 1)
        hits += int((pred[:, second] == rows[:, target]).sum())
        total += rows[:, target].numel()
    return hits, total


def copy_accuracy(model: torch.nn.Module, seq_len: int, generator: torch.Generator) -> float:
    rows = copy_rows(4, seq_len, generator)
    with torch.no_grad():
        pred = model(rows).logits.argmax(-1)
    hits, total = _copy_hits(pred, rows, list(range(0, seq_len - 2 * SPAN - 1, 2 * SPAN + 1)))
    return hits / total


def run(args: argparse.Namespace, lr: float) -> None:
    torch.manual_seed(0)
    tiny_s = resolve_config("tiny")[0].teachers[0].arch  # the preset's smallest rung
    tiny_s = tiny_s.model_copy(update={"tie_word_embeddings": args.tie})
    model = AutoModelForCausalLM.from_config(arch_to_config(tiny_s, VOCAB, eos_id=0, pad_id=SEP))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / max(args.warmup, 1))
    )
    data, held_out = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        rows = copy_rows(args.rows, args.seq_len, data)
        loss = model(rows, labels=rows).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        warmup.step()
        optimizer.zero_grad()
        if step % args.every == 0 or step == args.steps:
            acc = copy_accuracy(model, args.seq_len, held_out)
            elapsed = time.perf_counter() - start
            print(
                f"lr {lr:g}  step {step:5d}  loss {loss.item():.3f}  copy acc {acc:.3f}  "
                f"{elapsed:.0f} s",
                flush=True,
            )


def _grid_models(stages: Path) -> list[tuple[str, Path]]:
    """(label, model dir) of every teacher, warm start and final student in a stage store."""
    models = [
        (f"teacher {p.parent.name}", p) for p in sorted(stages.glob("prepare-teacher/*/final"))
    ]
    models += [(f"warm start {p.name}", p) for p in sorted(stages.glob("build-student/*"))]
    for run_dir in sorted(stages.glob("distill/*")):  # KD Full is not compressed
        summary = json.loads((run_dir / "summary.json").read_text())
        if summary.get("method") == "kd_full":
            models.append((f"kd_full {run_dir.name}", run_dir / "final"))
    for p in sorted(stages.glob("compress/*")):
        models.append((json.loads((p / "bl_manifest.json").read_text())["label"], p))
    return models


def grid_copy_accuracy(grid: Path) -> None:
    stages = grid / "stages"
    tokenizer_dir = next(stages.glob("prepare-tokenizer/*"))
    sep = separator_id(load_tokenizer(tokenizer_dir))
    # the validation slice is the smaller of the two packed datasets
    val_dir = min(stages.glob("pack-tokens/*"), key=lambda p: (p / "tokens.bin").stat().st_size)
    val, rng = PackedDataset(val_dir), random.Random(0)
    snippets = [
        insert_snippets(val[i]["input_ids"].tolist(), "induction", SPAN, 0.5, sep, rng)
        for i in range(min(16, len(val)))
    ]
    for label, model_dir in _grid_models(stages):
        model = load_causal_lm(model_dir).eval()
        hits = total = 0
        for row, placed in snippets:
            rows = torch.tensor([row])
            with torch.no_grad():
                pred = model(rows).logits.argmax(-1)
            h, t = _copy_hits(pred, rows, [start for start, _ in placed])
            hits, total = hits + h, total + t
        print(f"copy acc {hits / total:.3f}  {label}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lr", type=float, nargs="+", default=[2e-3])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--rows", type=int, default=2, help="rows per optimizer step")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=0, help="linear warm-up steps")
    parser.add_argument("--tie", action="store_true", help="tie the LM head to the embedding")
    parser.add_argument("--grid", type=Path, help="a finished grid: its models' copy accuracy")
    args = parser.parse_args()
    if args.grid is not None:
        grid_copy_accuracy(args.grid)
        return
    for lr in args.lr:
        run(args, lr)


if __name__ == "__main__":
    main()
