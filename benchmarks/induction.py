"""Whether the embedded ladder's smallest teacher architecture forms an induction head on
pure copy data, and how fast (issue "Fidelity": why the teachers score no ICL).

    python benchmarks/induction.py                       # lr 2e-3, 600 steps
    python benchmarks/induction.py --lr 6e-3 1.5e-2 --steps 1200

Each row is ``[20 random tokens, SEP, the same 20 tokens]`` repeated to 512 tokens, two rows
a step, AdamW without warm-up or decay. Every ``--every`` steps it prints the training loss
(a uniform guess is ln 2046 = 7.62 nats) and the accuracy of greedy predictions on the
second copies of fresh rows. Copying well above 0 means the induction phase change has
happened. The model is tiny-s of ``bl_core/presets/tiny.yaml`` (Mistral, hidden 96, 4
layers, read from the preset), built from a config: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM

from bl_core.ladder import arch_to_config
from bl_core.preset_files import resolve_config

VOCAB, SEP, SPAN, SEQ_LEN = 2048, 1, 20, 512  # the preset's vocabulary and packing


def copy_rows(batch: int, generator: torch.Generator) -> torch.Tensor:
    blocks = SEQ_LEN // (2 * SPAN + 1) + 1
    spans = torch.randint(2, VOCAB, (batch, blocks, SPAN), generator=generator)
    sep = torch.full((batch, blocks, 1), SEP)
    return torch.cat([spans, sep, spans], dim=2).reshape(batch, -1)[:, :SEQ_LEN]


def copy_accuracy(model: torch.nn.Module, generator: torch.Generator) -> float:
    rows = copy_rows(4, generator)
    with torch.no_grad():
        pred = model(rows).logits.argmax(-1)
    hits = total = 0
    for start in range(0, SEQ_LEN - 2 * SPAN - 1, 2 * SPAN + 1):
        second = slice(start + SPAN + 1, start + 2 * SPAN)  # predicting copy tokens 2..20
        target = slice(start + SPAN + 2, start + 2 * SPAN + 1)
        hits += int((pred[:, second] == rows[:, target]).sum())
        total += rows[:, target].numel()
    return hits / total


def run(lr: float, steps: int, every: int) -> None:
    torch.manual_seed(0)
    tiny_s = resolve_config("tiny")[0].teachers[0].arch  # the preset's smallest rung
    config = arch_to_config(tiny_s, VOCAB, eos_id=0, pad_id=SEP)
    model = AutoModelForCausalLM.from_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    data, held_out = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        rows = copy_rows(2, data)
        loss = model(rows, labels=rows).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step % every == 0 or step == steps:
            acc = copy_accuracy(model, held_out)
            elapsed = time.perf_counter() - start
            print(
                f"lr {lr:g}  step {step:5d}  loss {loss.item():.3f}  copy acc {acc:.3f}  "
                f"{elapsed:.0f} s",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lr", type=float, nargs="+", default=[2e-3])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=100)
    args = parser.parse_args()
    for lr in args.lr:
        run(lr, args.steps, args.every)


if __name__ == "__main__":
    main()
