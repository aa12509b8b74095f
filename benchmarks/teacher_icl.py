"""Diagnostic, not a speed benchmark (issue "Fidelity", docs/RESULTS.md §2): pretrain one
embedded teacher of a preset on its own, then run the 19 probes twice, on the held-out
words and on the training episodes' words. The same score on both means the failure is
not generalisation to unseen words (or their tokenisation) but that no rule is read off
the demonstrations. It also prints the in-context learning curve: answers fully right under
teacher forcing, by block index, on fresh training episodes (flat: nothing is learnt in
context)::

    python benchmarks/teacher_icl.py --teacher tiny-s --pretrain-tokens 900000
    python benchmarks/teacher_icl.py --teacher tiny-s --tie --set corpus.synthetic_icl_fraction=0.9
    python benchmarks/teacher_icl.py --max-positions 1024 --set tokenizer.vocab_size=260 \\
        --set packing.seq_len=1024 --set icl.max_new_tokens=14        # byte-level

Data and the teacher go under ``--out`` (resumable: a finished teacher is not retrained);
the JSON result (both suites, the validation perplexity, the settings) is written there.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bl_core.data import prepare_data
from bl_core.icl import run_icl_suite
from bl_core.io import atomic_write_text
from bl_core.ladder import load_teacher, prepare_teacher, teacher_by_name
from bl_core.packing import load_packed
from bl_core.perplexity import perplexity
from bl_core.preset_files import load_with_overrides
from bl_core.probes import check_tasks, generate_task, num_available
from bl_core.synthetic_icl import load_train_words, seeded_episode
from bl_core.tokenizer import load_tokenizer


def train_word_items(cfg) -> dict:
    """The suite's items with the training episodes' words in place of the held-out ones."""
    words, wanted = load_train_words(), cfg.items_per_task + cfg.num_shots
    items = {}
    for task in check_tasks(cfg.tasks):  # names only: no items generated twice
        if task in ("next_item", "prev_item"):  # number/day/month sequences: no words
            n = min(wanted, num_available(task))
        else:
            n = wanted if num_available(task) is None else min(wanted, len(words))
        items[task] = generate_task(task, n, words=words)
    return items


def learning_curve(model, tokenizer, seed: int, episodes: int = 200, blocks: int = 9) -> list:
    """Share of answers fully right under teacher forcing, by block index (the last entry
    pools the later blocks), on fresh training episodes (another stream seed). A model that
    learns in context rises from the first block on; a flat curve means it does not."""
    right, total = [0] * blocks, [0] * blocks
    for index in range(episodes):
        ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        answers = []
        for b, block in enumerate(seeded_episode(seed, index).split("\n\n")):
            cut = block.index("\nA:") + 3
            ids += tokenizer(("\n\n" if b else "") + block[:cut], add_special_tokens=False)[
                "input_ids"
            ]
            answer = tokenizer(block[cut:], add_special_tokens=False)["input_ids"]
            answers.append((len(ids), len(ids) + len(answer)))
            ids += answer
        limit = model.config.max_position_embeddings
        x = torch.tensor([ids[:limit]])
        with torch.no_grad():
            pred = model(x).logits.argmax(-1)[0]
        for b, (start, end) in enumerate(answers):
            if end > x.shape[1]:
                break
            k = min(b, blocks - 1)
            right[k] += bool((pred[start - 1 : end - 1] == x[0, start:end]).all())
            total[k] += 1
    return [r / t if t else None for r, t in zip(right, total)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("::")[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--teacher", default="tiny-s")
    parser.add_argument("--pretrain-tokens", type=int, help="default: the preset's")
    parser.add_argument("--tie", action="store_true", help="tie the LM head to the embedding")
    parser.add_argument("--max-positions", type=int, help="the rung's max_position_embeddings")
    parser.add_argument("--items", type=int, default=20, help="items per probe (1 seed)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=Path("outputs/teacher-icl"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg, _ = load_with_overrides(args.config, args.set)
    teacher = teacher_by_name(cfg, args.teacher)
    arch = {"tie_word_embeddings": True} if args.tie else {}
    if args.max_positions:
        arch["max_position_embeddings"] = args.max_positions
    teacher = teacher.model_copy(
        update={
            "arch": teacher.arch.model_copy(update=arch),
            "pretrain_tokens": args.pretrain_tokens or teacher.pretrain_tokens,
        }
    )
    start = time.perf_counter()
    data = prepare_data(cfg, args.out / "data")
    info = prepare_teacher(teacher, cfg, data, args.out / f"teacher-{teacher.name}")
    print(f"data + pretraining: {time.perf_counter() - start:.0f} s", flush=True)

    model, tokenizer = load_teacher(info), load_tokenizer(data.tokenizer_dir)
    ppl = perplexity(model, np.asarray(load_packed(data.val_dir)), cfg.perplexity.batch_size)
    icl_cfg = cfg.icl.model_copy(update={"items_per_task": args.items, "seeds": [0]})
    suites = {
        "held-out words": run_icl_suite(model, tokenizer, icl_cfg),
        "training words": run_icl_suite(model, tokenizer, icl_cfg, items=train_word_items(icl_cfg)),
    }
    print(f"validation perplexity {ppl['perplexity']:.2f} (per token, vocab {data.vocab_size})")
    header = f"{'probe':26s} {'held-out words':>15s} {'training words':>15s}"
    print(f"{header}  example (training words)")
    for task, held_out in suites["held-out words"]["tasks"].items():
        train = suites["training words"]["tasks"][task]
        example = train["examples"][0]
        print(
            f"{task:26s} {held_out['mean']:15.1%} {train['mean']:15.1%}  "
            f"{example['expected']!r} -> {example['generated'].strip()!r}"
        )
    composites = [suites[s]["composite"]["mean"] for s in suites]
    print(f"{'composite':26s} {composites[0]:15.1%} {composites[1]:15.1%}")
    curve = learning_curve(model, tokenizer, seed=cfg.corpus.synthetic_icl_seed + 7)
    shown = " ".join("-" if c is None else f"{c:.2f}" for c in curve)
    print(f"answers fully right on fresh training episodes, by block 1..9+: {shown}")
    result = {
        "teacher": teacher.model_dump(mode="json"),
        "overrides": args.set,
        "perplexity": ppl["perplexity"],
        "suites": suites,
        "learning_curve": curve,
    }
    atomic_write_text(args.out / f"icl-{teacher.name}.json", json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
