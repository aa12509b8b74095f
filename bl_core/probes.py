"""The 19 function-style ICL probe tasks (DESIGN §9; paper §4.1, Appendix F.1).

Same task names and rules as the Function Vectors suite (Todd et al. 2024):

- list tasks (``alphabetically_*``, ``choose_*``): the input is ``k`` distinct words
  joined by ``", "`` (``"duck, eraser, mantis"``); the output is one of them.
- letter tasks: ``capitalize`` title-cases the word (FV uses ``str.title``);
  ``capitalize_first_letter`` / ``capitalize_last_letter`` give that letter upper-cased;
  ``lowercase_first_letter`` / ``lowercase_last_letter`` take an UPPER-CASE word and
  give that letter lower-cased; ``next_capital_letter`` gives the capital letter after
  the word's first letter (``"hammock" -> "I"``, ``"zesty" -> "A"``);
  ``word_length`` gives the number of characters as a decimal string.
- ``next_item`` / ``prev_item`` step along FV's ordered sequences: number words,
  digits, letters, doubled letters, roman numerals (both cases), days and months
  (both cases; days and months wrap around).

Two sources give the same ``list[ProbeItem]``: :func:`generate_task` builds a task
deterministically from :data:`EVAL_WORDS` (no download), and :func:`load_fv_dir` reads
the original JSON files. The synthetic training corpus (DESIGN §8) must not use
:data:`EVAL_WORDS`, so that list is a stable public constant.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from bl_core.errors import ConfigError, InputError

TASKS: tuple[str, ...] = (
    "alphabetically_first_3",
    "alphabetically_first_5",
    "alphabetically_last_3",
    "alphabetically_last_5",
    "capitalize",
    "capitalize_first_letter",
    "capitalize_last_letter",
    "choose_first_of_3",
    "choose_first_of_5",
    "choose_last_of_3",
    "choose_last_of_5",
    "choose_middle_of_3",
    "choose_middle_of_5",
    "lowercase_first_letter",
    "lowercase_last_letter",
    "next_capital_letter",
    "next_item",
    "prev_item",
    "word_length",
)

# Held-out evaluation vocabulary: lowercase, alphabetic, 3-10 letters, no duplicates.
# Never reuse these words in training data (DESIGN §8-§9): the probes must measure
# in-context inference, not memorised input-output pairs.
_EVAL_WORDS_TEXT = """
anchor apron armchair badger bagpipe balcony bamboo banjo barrel basket beaver
beetle blanket blizzard bonnet bracelet bucket buffalo bugle cabbage cactus camel
canoe canyon captain carpet carrot castle cathedral cello chalk cheetah cherry
chimney chisel cinnamon clarinet cobra compass copper cottage cricket crystal
cucumber curtain cushion dagger dolphin donkey dragon drawer eagle easel eclipse
falcon feather ferret fiddle flannel flute fountain freckle galaxy garlic gazelle
giraffe glacier goblet gorilla granite guitar hammock harbor harp hazelnut hedgehog
helmet hornet iceberg igloo iguana jackal jaguar jasmine jellyfish kangaroo kettle
kitten koala ladder lantern leopard lettuce lighthouse lizard lobster magnet mango
marble meadow mitten mosquito muffin mushroom napkin needle nutmeg oasis octopus
olive orchid ostrich otter oyster paddle panther parrot peacock pebble pelican
pepper piano pickle pigeon pillow pineapple plum pony porcupine pumpkin puppet
quartz quilt rabbit raccoon radish raven ribbon robin rocket saddle salmon sandal
saucer scarf scorpion seagull shovel skeleton sparrow spider sponge squirrel
statue stool sunflower swan teapot thimble thistle tiger tomato tortoise trumpet
tulip turnip umbrella unicorn vase velvet violin volcano walnut walrus wagon
whistle willow wizard wombat yogurt zebra zipper
abandon absorb adjust admire arrange assemble attach balance bargain bounce
breathe browse calculate capture celebrate chase clap collapse compose crawl
decorate deliver dig divide drift embrace erase escape examine explore fasten
float fold gallop gather giggle glide grab greet hover hunt ignore imitate inspect
juggle kneel knock launch linger march measure melt mend mumble murmur nibble
observe obtain paint pause polish pounce prepare pretend rescue ripple roam scatter
scribble shiver sketch slide sneeze sparkle splash squeeze stir stumble surrender
swallow sweep swing tickle travel tumble twist unfold vanish wander whisper wobble
yawn
ancient anxious bitter bold brave brisk bumpy calm cheerful chilly clumsy cozy
crisp curious damp dizzy eager elegant empty fancy fierce fluffy fragile frosty
gentle giant gloomy graceful greedy grumpy hasty hollow humble icy jolly keen
lively lonely loyal massive mellow messy mighty modest muddy narrow nervous noisy
odd patient plain polite proud quiet rapid rough rusty shallow shiny silent sleepy
slender smooth sour sturdy sudden swift tender tidy tiny vivid wary weary wild
witty zesty
"""
EVAL_WORDS: tuple[str, ...] = tuple(_EVAL_WORDS_TEXT.split())


class ProbeItem(NamedTuple):
    """One task example; ``input``/``output`` as in the FV JSON files."""

    input: str
    output: str


def _check_task(name: str) -> None:
    if name not in TASKS:
        raise ConfigError(f"unknown ICL task {name!r}; known tasks: {', '.join(TASKS)}")


def check_tasks(names: Iterable[str] | None) -> tuple[str, ...]:
    """Validate task names; ``None`` means all 19. Raises :class:`ConfigError`."""
    if names is None:
        return TASKS
    names = tuple(names)
    for name in names:
        _check_task(name)
    if not names:
        raise ConfigError(f"no ICL tasks selected; known tasks: {', '.join(TASKS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"ICL task list names a task more than once: {', '.join(names)}")
    return names


# --- next_item / prev_item: FV's ordered sequences -----------------------------------

_NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen twenty"
).split()
_ROMAN = "I II III IV V VI VII VIII IX X XI XII XIII XIV XV XVI XVII XVIII XIX XX".split()
_DAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
_MONTHS = (
    "january february march april may june july august september october november december"
).split()


def _sequences() -> list[tuple[list[str], bool]]:
    """(sequence, wraps_around) pairs, in the FV data's order."""
    lower, upper = list(string.ascii_lowercase), list(string.ascii_uppercase)
    return [
        (_NUMBER_WORDS, False),
        ([str(i) for i in range(30)], False),
        (lower, False),
        (upper, False),
        ([c * 2 for c in upper], False),
        ([c * 2 for c in lower], False),
        (_ROMAN, False),
        ([r.lower() for r in _ROMAN], False),
        (_DAYS, True),
        (_MONTHS, True),
        ([d.capitalize() for d in _DAYS], True),
        ([m.capitalize() for m in _MONTHS], True),
    ]


def _step_pairs(step: int) -> list[ProbeItem]:
    """All (item, neighbour) pairs, dropping inputs with two valid answers.

    FV keeps a few ambiguous inputs (roman "i" -> "ii" vs letter "i" -> "j", DESIGN §9);
    exact match cannot score those fairly, so the built-in data leaves them out.
    """
    answers: dict[str, set[str]] = {}
    order: list[str] = []
    for seq, wraps in _sequences():
        for i, item in enumerate(seq):
            j = i + step
            if not wraps and not 0 <= j < len(seq):
                continue
            if item not in answers:
                answers[item] = set()
                order.append(item)
            answers[item].add(seq[j % len(seq)])
    return [ProbeItem(x, next(iter(answers[x]))) for x in order if len(answers[x]) == 1]


# --- word-based tasks -----------------------------------------------------------------


def _next_capital(word: str) -> str:
    return chr((ord(word[0].lower()) - ord("a") + 1) % 26 + ord("A"))


_WORD_RULES: dict[str, Callable[[str], ProbeItem]] = {
    "capitalize": lambda w: ProbeItem(w, w.title()),
    "capitalize_first_letter": lambda w: ProbeItem(w, w[0].upper()),
    "capitalize_last_letter": lambda w: ProbeItem(w, w[-1].upper()),
    "lowercase_first_letter": lambda w: ProbeItem(w.upper(), w[0].lower()),
    "lowercase_last_letter": lambda w: ProbeItem(w.upper(), w[-1].lower()),
    "next_capital_letter": lambda w: ProbeItem(w, _next_capital(w)),
    "word_length": lambda w: ProbeItem(w, str(len(w))),
}

# name -> (list length, picks the answer from the list)
_LIST_RULES: dict[str, tuple[int, Callable[[Sequence[str]], str]]] = {
    "alphabetically_first_3": (3, min),
    "alphabetically_first_5": (5, min),
    "alphabetically_last_3": (3, max),
    "alphabetically_last_5": (5, max),
    "choose_first_of_3": (3, lambda ws: ws[0]),
    "choose_first_of_5": (5, lambda ws: ws[0]),
    "choose_last_of_3": (3, lambda ws: ws[-1]),
    "choose_last_of_5": (5, lambda ws: ws[-1]),
    "choose_middle_of_3": (3, lambda ws: ws[1]),
    "choose_middle_of_5": (5, lambda ws: ws[2]),
}


def num_available(name: str) -> int | None:
    """How many distinct items :func:`generate_task` can make (``None``: unbounded)."""
    _check_task(name)
    if name in _WORD_RULES:
        return len(EVAL_WORDS)
    if name in ("next_item", "prev_item"):
        return len(_step_pairs(1 if name == "next_item" else -1))
    return None


def _list_items(
    name: str, num_items: int, rng: random.Random, vocabulary: Sequence[str]
) -> list[ProbeItem]:
    """Distinct random lists; a word is the answer again only once every word could
    have been (the k-th repeat after ``(k - 1) * len(vocabulary)`` items), within a
    bounded number of draws, so no answer is much more frequent than another."""
    size, pick = _LIST_RULES[name]
    if len(set(vocabulary)) < size:
        raise ConfigError(f"task {name!r} lists {size} distinct words; got {len(set(vocabulary))}")
    items: list[ProbeItem] = []
    seen: set[str] = set()
    answered: dict[str, int] = {}
    while len(items) < num_items:
        allowed = 1 + len(items) // len(vocabulary)
        for _ in range(200):
            words = rng.sample(vocabulary, size)
            text, answer = ", ".join(words), pick(words)
            # distinct inputs, so a demonstration never equals the query
            if text not in seen and answered.get(answer, 0) < allowed:
                break
        if text in seen:
            continue
        seen.add(text)
        answered[answer] = answered.get(answer, 0) + 1
        items.append(ProbeItem(text, answer))
    return items


# Share of the most frequent answer in the original Function Vectors files (Todd et al.
# 2024; github.com/ericwtodd/function_vectors, dataset_files/, commit fb9eac7): what a
# model that always gives one answer scores there. The built-in generators stay at or
# under these (tests/bl_core/test_probes.py), so a constant guess earns no more here.
FV_TOP_ANSWER_SHARE: dict[str, float] = {
    "alphabetically_first_3": 0.008, "alphabetically_first_5": 0.010,
    "alphabetically_last_3": 0.007, "alphabetically_last_5": 0.011,
    "capitalize": 0.001, "capitalize_first_letter": 0.084, "capitalize_last_letter": 0.238,
    "choose_first_of_3": 0.006, "choose_first_of_5": 0.006, "choose_last_of_3": 0.006,
    "choose_last_of_5": 0.006, "choose_middle_of_3": 0.005, "choose_middle_of_5": 0.007,
    "lowercase_first_letter": 0.084, "lowercase_last_letter": 0.238,
    "next_capital_letter": 0.084, "next_item": 0.009, "prev_item": 0.009, "word_length": 0.200,
}  # fmt: skip


def _answer_balanced(pool: Sequence[ProbeItem], rng: random.Random) -> list[ProbeItem]:
    """All of ``pool`` in round-robin order over the answers (answer order and each
    answer's items shuffled by ``rng``), so that any prefix spreads its items over the
    answers as evenly as the pool allows. Sampled uniformly, the eval words would make
    "6" the answer to 40% of word_length items: a constant guess would score 40%."""
    buckets: dict[str, list[ProbeItem]] = {}
    for item in pool:
        buckets.setdefault(item.output, []).append(item)
    answers = sorted(buckets)
    rng.shuffle(answers)
    for answer in answers:
        rng.shuffle(buckets[answer])
    order: list[ProbeItem] = []
    while len(order) < len(pool):
        order += [buckets[a].pop() for a in answers if buckets[a]]
    return order


def generate_task(
    name: str, num_items: int, seed: int = 0, words: Sequence[str] | None = None
) -> list[ProbeItem]:
    """``num_items`` distinct items of task ``name``, the same for the same ``seed`` (and
    a prefix of the items for a larger ``num_items``).

    ``words``: the word and list tasks' vocabulary (default :data:`EVAL_WORDS`; another
    list is for diagnostics, e.g. the training episodes' words: a model that fails on those
    too cannot read the rule, rather than not knowing the words).

    Finite tasks (word and sequence tasks) hold :func:`num_available` items, taken
    round-robin over their answers (:func:`_answer_balanced`); asking for more raises
    :class:`ConfigError`. List tasks draw distinct random lists.
    """
    _check_task(name)
    if num_items < 1:
        raise ConfigError(f"num_items={num_items}: must be >= 1")
    # A str seed is hashed with sha512 by `random`, so this is stable across
    # processes and platforms (unlike hash(), which PYTHONHASHSEED salts).
    rng = random.Random(f"bl-probes:{name}:{seed}")
    vocabulary = EVAL_WORDS if words is None else tuple(words)
    if name in _LIST_RULES:
        return _list_items(name, num_items, rng, vocabulary)
    if name in _WORD_RULES:
        pool = [_WORD_RULES[name](w) for w in vocabulary]
    else:
        pool = _step_pairs(1 if name == "next_item" else -1)
    if num_items > len(pool):
        raise ConfigError(
            f"task {name!r} has {len(pool)} distinct built-in items; "
            f"num_items={num_items} is too many"
        )
    return _answer_balanced(pool, rng)[:num_items]


# --- Function Vectors JSON files ------------------------------------------------------


def _find_fv_file(root: Path, task: str) -> Path:
    # Also accept FV's own dataset_files/ layout (abstractive/ and extractive/).
    candidates = [root / f"{task}.json"] + [
        root / sub / f"{task}.json" for sub in ("abstractive", "extractive")
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise InputError(f"ICL data file {str(candidates[0])!r} for task {task!r} does not exist")


def _read_fv_file(path: Path) -> list[ProbeItem]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"ICL data file {str(path)!r} is not readable JSON: {err}") from None
    if not isinstance(data, list):
        raise InputError(
            f"ICL data file {str(path)!r} must hold a JSON list of "
            f'{{"input": ..., "output": ...}} objects, got {type(data).__name__}'
        )
    if not data:
        raise InputError(f"ICL data file {str(path)!r} holds no items")
    items = []
    for i, entry in enumerate(data):
        fields = [entry.get(k) if isinstance(entry, dict) else None for k in ("input", "output")]
        if not all(isinstance(v, str | int) and not isinstance(v, bool) for v in fields):
            raise InputError(
                f"ICL data file {str(path)!r}: item {i} must be an object with string "
                f'"input" and "output", got {entry!r}'
            )
        items.append(ProbeItem(str(fields[0]), str(fields[1])))
    return items


def load_fv_dir(path: str | Path, tasks: Iterable[str] | None = None) -> dict[str, list[ProbeItem]]:
    """Read ``<path>/<task>.json`` (Function Vectors format) for each task.

    Missing, unreadable, empty or malformed files raise :class:`InputError` naming the
    file; unknown task names raise :class:`ConfigError`.
    """
    root = Path(path)
    names = check_tasks(tasks)
    if not root.is_dir():
        raise InputError(f"ICL data directory {str(root)!r} does not exist")
    return {name: _read_fv_file(_find_fv_file(root, name)) for name in names}
