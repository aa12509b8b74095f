"""Synthetic function-style ICL episodes for the training corpus (DESIGN §8, §9).

Why: a toy-scale teacher trained on prose alone shows no measurable in-context
learning on the function-style probes of DESIGN §9, so every method would score ~0 and
the ICL table would compare noise. Mixing a small share of episodes into the corpus
(``CorpusConfig.synthetic_icl_fraction``, see :mod:`bl_core.corpus`) teaches the
teachers the *format* and the habit of inferring a rule from demonstrations.

An episode is ``num_examples`` blocks in the exact probe format, separated by a blank
line, all applying one simple rule (:data:`SYNTHETIC_TASKS`)::

    Q:kestrel
    A:KESTREL

    Q:gneiss
    A:GNEISS

Inputs are words from ``resources/train_words.txt``, a list disjoint from the probes'
evaluation words (``bl_core.probes.EVAL_WORDS``; a test checks it), and four-digit
numbers, which the probes' ``next_item``/``prev_item`` sequences never use: the probes
then measure in-context inference, not memorised input-output pairs.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Mapping, Sequence
from importlib import resources

EPISODE_EXAMPLES = (4, 16)  # Q/A blocks per episode (inclusive); the probes show 10 + 1

_Task = Callable[[random.Random, Sequence[str]], tuple[str, str]]


def _word_rule(rule: Callable[[str], str]) -> _Task:
    def task(rng: random.Random, words: Sequence[str]) -> tuple[str, str]:
        word = rng.choice(words)
        return word, rule(word)

    return task


def _list_rule(size: int, pick: Callable[[list[str]], str]) -> _Task:
    def task(rng: random.Random, words: Sequence[str]) -> tuple[str, str]:
        items = rng.sample(list(words), size)
        return ", ".join(items), pick(items)

    return task


def _number_rule(step: int) -> _Task:
    def task(rng: random.Random, words: Sequence[str]) -> tuple[str, str]:
        number = rng.randrange(1000, 9999)
        return str(number), str(number + step)

    return task


def _upper_input_rule(rule: Callable[[str], str]) -> _Task:
    def task(rng: random.Random, words: Sequence[str]) -> tuple[str, str]:
        word = rng.choice(words)
        return word.upper(), rule(word)

    return task


def _next_capital(word: str) -> str:
    return chr((ord(word[0].lower()) - ord("a") + 1) % 26 + ord("A"))


# The probes' rule families (bl_core.probes), on the training words, plus a few more
# (uppercase, reverse, first/last letter, number steps): the teachers learn rules and the
# habit of telling from the demonstrations which one applies; the probes then ask for a
# rule on words they never saw.
SYNTHETIC_TASKS: Mapping[str, _Task] = {
    "uppercase": _word_rule(str.upper),
    "capitalize": _word_rule(str.capitalize),
    "first_letter": _word_rule(lambda w: w[0]),
    "last_letter": _word_rule(lambda w: w[-1]),
    "capitalize_first_letter": _word_rule(lambda w: w[0].upper()),
    "capitalize_last_letter": _word_rule(lambda w: w[-1].upper()),
    "lowercase_first_letter": _upper_input_rule(lambda w: w[0]),
    "lowercase_last_letter": _upper_input_rule(lambda w: w[-1]),
    "next_capital_letter": _word_rule(_next_capital),
    "word_length": _word_rule(lambda w: str(len(w))),
    "reverse": _word_rule(lambda w: w[::-1]),
    "choose_first_of_3": _list_rule(3, lambda items: items[0]),
    "choose_first_of_5": _list_rule(5, lambda items: items[0]),
    "choose_middle_of_3": _list_rule(3, lambda items: items[1]),
    "choose_middle_of_5": _list_rule(5, lambda items: items[2]),
    "choose_last_of_3": _list_rule(3, lambda items: items[-1]),
    "choose_last_of_5": _list_rule(5, lambda items: items[-1]),
    "alphabetically_first_3": _list_rule(3, min),
    "alphabetically_first_5": _list_rule(5, min),
    "alphabetically_last_3": _list_rule(3, max),
    "alphabetically_last_5": _list_rule(5, max),
    "next_number": _number_rule(1),
    "prev_number": _number_rule(-1),
}


@functools.cache
def load_train_words() -> tuple[str, ...]:
    """The training word list (sorted, unique); disjoint from the probes' words."""
    text = resources.files("bl_core").joinpath("resources/train_words.txt").read_text("utf-8")
    lines = (line.strip() for line in text.splitlines())
    return tuple(sorted({line for line in lines if line and not line.startswith("#")}))


def make_icl_episode(
    rng: random.Random,
    words: Sequence[str],
    num_examples: int,
    task: str | None = None,
    query_prefix: str = "Q:",
    answer_prefix: str = "A:",
) -> str:
    """``num_examples`` blocks ``Q:<input>\\nA:<output>`` of one task, blank-line separated,
    with distinct inputs. ``task=None`` draws the task from ``rng``."""
    if task is not None and task not in SYNTHETIC_TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; known: {', '.join(SYNTHETIC_TASKS)}")
    rule = SYNTHETIC_TASKS[task if task is not None else rng.choice(sorted(SYNTHETIC_TASKS))]
    examples: dict[str, str] = {}
    for _ in range(20 * num_examples):  # bounded retries for distinct inputs
        if len(examples) == num_examples:
            break
        question, answer = rule(rng, words)
        examples.setdefault(question, answer)
    return "\n\n".join(f"{query_prefix}{q}\n{answer_prefix}{a}" for q, a in examples.items())


def seeded_episode(seed: int, index: int) -> str:
    """Episode ``index`` of the stream for ``seed``: a function of ``(seed, index)`` only."""
    rng = random.Random(f"{seed}/{index}")  # str seeds are hashed stably (sha512), not hash()
    return make_icl_episode(rng, load_train_words(), rng.randint(*EPISODE_EXAMPLES))
