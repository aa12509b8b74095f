"""ICL prompts in the paper's exact format, scoring, batched generation, the suite."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import torch
from conftest import make_mistral, make_tokenizer
from torch import nn

from bl_core.config import ICLConfig
from bl_core.errors import ConfigError
from bl_core.icl import (
    build_prompt,
    build_task_prompts,
    generate_greedy,
    is_exact_match,
    load_task_items,
    run_icl_suite,
    sample_demonstrations,
)
from bl_core.probes import TASKS, ProbeItem, generate_task

UPPER = [ProbeItem(w, w.upper()) for w in ["dog", "house", "train", "river", "cat", "tree"]]


def test_prompt_matches_the_paper_example() -> None:
    demos = UPPER[:3]
    assert (
        build_prompt(demos, "river")
        == "Q:dog\nA:DOG\n\nQ:house\nA:HOUSE\n\nQ:train\nA:TRAIN\n\nQ:river\nA:"
    )
    assert build_prompt([], "river") == "Q:river\nA:"
    assert build_prompt(demos[:1], "cat", "Q: ", "A: ") == "Q: dog\nA: DOG\n\nQ: cat\nA: "


def test_task_prompts_for_a_fixed_seed_are_exactly_these() -> None:
    cfg = ICLConfig(num_shots=3, items_per_task=2)
    assert build_task_prompts("capitalize", UPPER, cfg, seed=0) == [
        ("Q:river\nA:RIVER\n\nQ:tree\nA:TREE\n\nQ:house\nA:HOUSE\n\nQ:train\nA:", UPPER[2]),
        ("Q:cat\nA:CAT\n\nQ:dog\nA:DOG\n\nQ:house\nA:HOUSE\n\nQ:tree\nA:", UPPER[5]),
    ]
    # Another seed changes the demonstrations, never the queries.
    assert build_task_prompts("capitalize", UPPER, cfg, seed=1) == [
        ("Q:house\nA:HOUSE\n\nQ:dog\nA:DOG\n\nQ:tree\nA:TREE\n\nQ:train\nA:", UPPER[2]),
        ("Q:house\nA:HOUSE\n\nQ:cat\nA:CAT\n\nQ:train\nA:TRAIN\n\nQ:tree\nA:", UPPER[5]),
    ]


def test_demonstrations_never_include_the_query() -> None:
    items = generate_task("capitalize", 30) + [ProbeItem("anchor", "ANCHOR?")]  # a duplicate input
    rng = random.Random(0)
    for q in range(len(items)):
        for _ in range(5):
            demos = sample_demonstrations(items, q, 10, rng)
            assert len(demos) == 10 and len(set(demos)) == 10
            assert items[q].input not in {d.input for d in demos}


def test_too_few_items_for_the_shots_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="task 'capitalize' has 6 items; num_shots=6"):
        build_task_prompts("capitalize", UPPER, ICLConfig(num_shots=6), seed=0)


@pytest.mark.parametrize(
    ("generated", "correct"),
    [
        ("Apple", True),
        (" Apple", True),
        ("Apple\n", True),
        (" Apple\n\nQ:pear\nA:Pear", True),
        ("Apple  \nfoo", True),
        ("apple", False),
        ("Apples", False),
        ("Pear\nApple", False),
        ("\nApple", False),
        ("", False),
    ],
)
def test_exact_match_scores_the_stripped_first_line(generated: str, correct: bool) -> None:
    assert is_exact_match(generated, "Apple") is correct


def test_batched_left_padded_generation_equals_unbatched() -> None:
    model, tokenizer = make_mistral(), make_tokenizer()
    prompts = [build_prompt(UPPER[:k], UPPER[k].input) for k in (0, 4, 1, 3, 2)] + [
        "The quick brown fox jumps over the lazy dog.\nQ:x\nA:"
    ]
    assert len({len(tokenizer(p)["input_ids"]) for p in prompts}) == len(prompts)  # all padded
    one_by_one = generate_greedy(model, tokenizer, prompts, max_new_tokens=6, batch_size=1)
    batched = generate_greedy(model, tokenizer, prompts, max_new_tokens=6, batch_size=4)
    assert batched == one_by_one
    assert any(len(t) > 0 for t in batched)


class _Oracle(nn.Module):
    """Behaves like a causal LM whose greedy answer is ``answer_for(query input)``."""

    def __init__(self, tokenizer: Any, answers: dict[str, str], suffix: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.tokenizer, self.answers, self.suffix = tokenizer, answers, suffix

    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw: Any
    ) -> torch.Tensor:
        rows = []
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            prompt = self.tokenizer.decode(ids[mask.bool()])
            query = prompt.rsplit("Q:", 1)[1].split("\nA:")[0]
            rows.append(self.tokenizer(f" {self.answers[query]}{self.suffix}\nQ:")["input_ids"])
        width = max(len(r) for r in rows)
        new = [r + [self.tokenizer.pad_token_id] * (width - len(r)) for r in rows]
        return torch.cat([input_ids, torch.tensor(new)], dim=1)


@pytest.mark.parametrize(("suffix", "accuracy"), [("", 1.0), ("x", 0.0)])
def test_suite_scores_an_oracle_and_a_wrong_oracle(suffix: str, accuracy: float) -> None:
    tokenizer = make_tokenizer()
    cfg = ICLConfig(tasks=("capitalize", "next_item", "choose_middle_of_5"), items_per_task=5)
    items = load_task_items(cfg)
    answers = {i.input: i.output for task_items in items.values() for i in task_items}
    result = run_icl_suite(_Oracle(tokenizer, answers, suffix), tokenizer, cfg)
    assert set(result["tasks"]) == set(cfg.tasks)
    for task in result["tasks"].values():
        assert task["per_seed"] == [accuracy] * 3 and task["mean"] == accuracy
        assert task["std"] == 0.0 and task["num_items"] == 5
    assert result["composite"]["mean"] == accuracy
    assert result["format"]["query_prefix"] == "Q:" and result["num_shots"] == 10
    json.dumps(result)


def test_suite_on_a_tiny_model_reports_all_19_tasks() -> None:
    cfg = ICLConfig(items_per_task=3, seeds=(0, 1), num_shots=2, max_new_tokens=2)
    model = make_mistral().train()
    result = run_icl_suite(model, make_tokenizer(), cfg)
    assert list(result["tasks"]) == list(TASKS)
    assert model.training, "the model's training flag is restored"
    for task in result["tasks"].values():
        assert len(task["per_seed"]) == 2 and 0.0 <= task["mean"] <= 1.0
        assert len(task["examples"]) == 3
    means = [t["mean"] for t in result["tasks"].values()]
    assert result["composite"]["mean"] == pytest.approx(sum(means) / 19)
    assert result["seeds"] == [0, 1] and result["items_per_task"] == 3
    json.dumps(result)


def test_builtin_items_give_room_for_demonstrations() -> None:
    items = load_task_items(ICLConfig(items_per_task=4, num_shots=10, tasks=("word_length",)))
    assert len(items["word_length"]) == 14
