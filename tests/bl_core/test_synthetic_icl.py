"""Synthetic function-style ICL episodes (bl_core/synthetic_icl.py)."""

from __future__ import annotations

import random
import re

import pytest

from bl_core.synthetic_icl import (
    EPISODE_EXAMPLES,
    SYNTHETIC_TASKS,
    load_train_words,
    make_icl_episode,
    seeded_episode,
)

EPISODE = re.compile(r"Q:[^\n]+\nA:[^\n]+(\n\nQ:[^\n]+\nA:[^\n]+)*")


def test_train_words_are_plain_lowercase_words() -> None:
    words = load_train_words()
    assert len(words) >= 300 and all(re.fullmatch(r"[a-z]{3,12}", w) for w in words)


@pytest.mark.parametrize("task", sorted(SYNTHETIC_TASKS))
def test_episodes_follow_the_probe_format(task: str) -> None:
    episode = make_icl_episode(random.Random(0), load_train_words(), 10, task=task)
    assert EPISODE.fullmatch(episode), episode
    blocks = episode.split("\n\n")
    assert len(blocks) == 10
    inputs = [b.split("\n")[0].removeprefix("Q:") for b in blocks]
    assert len(set(inputs)) == 10  # distinct, like the probes' demonstrations


def test_episode_rules_are_what_they_say() -> None:
    rng = random.Random(1)
    upper = make_icl_episode(rng, ["alpha", "beta"], 2, task="uppercase")
    assert set(upper.split("\n\n")) == {"Q:alpha\nA:ALPHA", "Q:beta\nA:BETA"}
    first = make_icl_episode(rng, ["ab", "cd", "ef"], 1, task="choose_first_of_3")
    question, answer = first.removeprefix("Q:").split("\nA:")
    assert question.split(", ")[0] == answer
    with pytest.raises(ValueError, match="unknown synthetic task"):
        make_icl_episode(rng, ["ab"], 1, task="nope")


def test_seeded_episodes_are_reproducible_and_sized() -> None:
    assert seeded_episode(0, 5) == seeded_episode(0, 5) != seeded_episode(0, 6)
    sizes = {len(seeded_episode(7, i).split("\n\n")) for i in range(200)}
    assert min(sizes) >= EPISODE_EXAMPLES[0] and max(sizes) <= EPISODE_EXAMPLES[1]
    assert len(sizes) > 5


def test_custom_prefixes_are_used() -> None:
    episode = make_icl_episode(random.Random(0), ["ab", "cd"], 2, "uppercase", "Q: ", "A: ")
    assert episode.startswith("Q: ") and "\nA: " in episode
