"""Task generators follow the Function Vectors rules; FV JSON files load or fail loudly."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest

from bl_core.errors import ConfigError, InputError
from bl_core.probes import (
    EVAL_WORDS,
    TASKS,
    ProbeItem,
    check_tasks,
    generate_task,
    load_fv_dir,
    num_available,
)

FV_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fv"


def _words(text: str, k: int) -> list[str]:
    words = text.split(", ")
    assert len(words) == k and len(set(words)) == k, text
    assert all(w in EVAL_WORDS for w in words), text
    return words


def _word(text: str) -> str:
    assert text in EVAL_WORDS, text
    return text


# Sequences written out independently of bl_core.probes (the FV next_item data).
_ROMAN = "I II III IV V VI VII VIII IX X XI XII XIII XIV XV XVI XVII XVIII XIX XX".split()
_DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august"]
_MONTHS += ["september", "october", "november", "december"]
_SEQUENCES = [
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty".split(),
    [str(n) for n in range(30)],
    list(string.ascii_lowercase),
    list(string.ascii_uppercase),
    [c + c for c in string.ascii_uppercase],
    [c + c for c in string.ascii_lowercase],
    _ROMAN,
    [r.lower() for r in _ROMAN],
]
_CYCLES = [_DAYS, _MONTHS, [d.title() for d in _DAYS], [m.title() for m in _MONTHS]]


def _is_step(inp: str, out: str, step: int) -> bool:
    for seq in _SEQUENCES:
        for i, item in enumerate(seq):
            if item == inp and 0 <= i + step < len(seq) and seq[i + step] == out:
                return True
    return any(inp in cyc and cyc[(cyc.index(inp) + step) % len(cyc)] == out for cyc in _CYCLES)


RULES = {
    "alphabetically_first_3": lambda i, o: o == sorted(_words(i, 3))[0],
    "alphabetically_first_5": lambda i, o: o == sorted(_words(i, 5))[0],
    "alphabetically_last_3": lambda i, o: o == sorted(_words(i, 3))[-1],
    "alphabetically_last_5": lambda i, o: o == sorted(_words(i, 5))[-1],
    "capitalize": lambda i, o: o == _word(i)[0].upper() + i[1:],
    "capitalize_first_letter": lambda i, o: o == _word(i)[0].upper() and o.isupper(),
    "capitalize_last_letter": lambda i, o: o == _word(i)[-1].upper() and len(o) == 1,
    "choose_first_of_3": lambda i, o: o == _words(i, 3)[0],
    "choose_first_of_5": lambda i, o: o == _words(i, 5)[0],
    "choose_last_of_3": lambda i, o: o == _words(i, 3)[2],
    "choose_last_of_5": lambda i, o: o == _words(i, 5)[4],
    "choose_middle_of_3": lambda i, o: o == _words(i, 3)[1],
    "choose_middle_of_5": lambda i, o: o == _words(i, 5)[2],
    "lowercase_first_letter": lambda i, o: i.isupper() and o == _word(i.lower())[0],
    "lowercase_last_letter": lambda i, o: i.isupper() and o == _word(i.lower())[-1],
    "next_capital_letter": lambda i, o: (
        o == string.ascii_uppercase[(string.ascii_lowercase.index(_word(i)[0]) + 1) % 26]
    ),
    "next_item": lambda i, o: _is_step(i, o, 1),
    "prev_item": lambda i, o: _is_step(i, o, -1),
    "word_length": lambda i, o: o.isdigit() and int(o) == len(_word(i)),
}


def test_the_suite_has_the_19_design_tasks() -> None:
    assert len(TASKS) == 19 and set(TASKS) == set(RULES)


def test_eval_words_are_a_clean_lowercase_vocabulary() -> None:
    assert isinstance(EVAL_WORDS, tuple) and len(EVAL_WORDS) >= 300
    assert len(set(EVAL_WORDS)) == len(EVAL_WORDS)
    assert all(w.isalpha() and w.islower() and w.isascii() for w in EVAL_WORDS)


@pytest.mark.parametrize("task", TASKS)
def test_every_generated_item_follows_its_rule(task: str) -> None:
    available = num_available(task)
    n = 150 if available is None else available
    items = generate_task(task, n, seed=3)
    assert len(items) == n
    assert len({item.input for item in items}) == n, "inputs must be distinct"
    for item in items:
        assert isinstance(item, ProbeItem)
        assert RULES[task](item.input, item.output), item


@pytest.mark.parametrize("task", TASKS)
def test_generation_is_deterministic_and_prefix_stable(task: str) -> None:
    assert generate_task(task, 20, seed=1) == generate_task(task, 20, seed=1)
    assert generate_task(task, 20, seed=1) != generate_task(task, 20, seed=2)
    assert generate_task(task, 30, seed=1)[:20] == generate_task(task, 20, seed=1)


_PICKS = {
    "choose_middle_of_5": lambda ws: ws[2],
    "alphabetically_last_3": max,
    "capitalize": lambda ws: ws[0].title(),
}


@pytest.mark.parametrize("task", sorted(_PICKS))
def test_another_vocabulary_gives_items_of_those_words_only(task: str) -> None:
    words = ("kestrel", "gneiss", "tabard", "sitar", "whimper", "atoll", "perch", "mica")
    items = generate_task(task, 8, seed=0, words=words)
    assert len({item.input for item in items}) == 8
    for item in items:
        listed = item.input.split(", ")
        assert set(listed) <= set(words) and item.output == _PICKS[task](listed), item
    assert generate_task(task, 8, seed=0) == generate_task(task, 8, seed=0, words=EVAL_WORDS)


def test_a_vocabulary_too_small_for_the_lists_is_named() -> None:
    with pytest.raises(ConfigError, match="lists 5 distinct words; got 2"):
        generate_task("choose_first_of_5", 3, words=("kestrel", "gneiss", "kestrel"))


def test_sequence_tasks_drop_inputs_with_two_answers() -> None:
    pairs = dict(generate_task("next_item", num_available("next_item")))
    assert pairs["sunday"] == "monday" and pairs["December"] == "January"
    assert pairs["9"] == "10" and pairs["IV"] == "V" and pairs["yy"] == "zz"
    for ambiguous in ("i", "v", "x", "I", "V", "X", "ii", "II"):
        assert ambiguous not in pairs
    prev = dict(generate_task("prev_item", num_available("prev_item")))
    assert prev["monday"] == "sunday" and prev["twenty"] == "nineteen" and "xx" not in prev


def test_unknown_task_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown ICL task 'antonym'.*capitalize_first_letter"):
        generate_task("antonym", 5)
    with pytest.raises(ConfigError, match="known tasks: alphabetically_first_3"):
        check_tasks(["word_length", "capitalise"])


def test_asking_more_than_a_finite_task_holds_is_an_error() -> None:
    with pytest.raises(ConfigError, match="'word_length' has 350 distinct built-in items"):
        generate_task("word_length", len(EVAL_WORDS) + 1)


def test_load_fv_dir_reads_the_fixture() -> None:
    data = load_fv_dir(FV_FIXTURES, ["capitalize", "next_item", "choose_first_of_3"])
    assert list(data) == ["capitalize", "next_item", "choose_first_of_3"]
    assert data["capitalize"][2] == ProbeItem("fishing pole", "Fishing Pole")
    assert len(data["capitalize"]) == 6 and len(data["choose_first_of_3"]) == 6
    assert data["next_item"][-1] == ProbeItem("December", "January")
    assert [item.output for item in data["next_item"] if item.input == "i"] == ["j", "ii"]


def test_load_fv_dir_accepts_the_fv_repository_layout(tmp_path: Path) -> None:
    (tmp_path / "abstractive").mkdir()
    (tmp_path / "abstractive" / "word_length.json").write_text(
        json.dumps([{"input": "ant", "output": "3"}, {"input": "emu", "output": 3}])
    )
    assert load_fv_dir(tmp_path, ["word_length"])["word_length"][1] == ProbeItem("emu", "3")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[{"input": "a", "output": "A"},', "is not readable JSON"),
        ("", "is not readable JSON"),
        ("[]", "holds no items"),
        ('{"input": "a", "output": "A"}', "must hold a JSON list"),
        ('[{"input": "a"}]', "item 0 must be an object"),
        ('[{"input": "a", "output": "A"}, "b"]', "item 1 must be an object"),
        ('[{"input": "a", "output": null}]', "item 0 must be an object"),
    ],
)
def test_bad_fv_files_name_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "capitalize.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as err:
        load_fv_dir(tmp_path, ["capitalize"])
    assert str(path) in str(err.value)


def test_missing_fv_file_or_dir_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="word_length.json") as err:
        load_fv_dir(FV_FIXTURES, ["capitalize", "word_length"])
    assert str(FV_FIXTURES) in str(err.value)
    with pytest.raises(InputError, match="does not exist"):
        load_fv_dir(tmp_path / "nowhere", ["capitalize"])
    with pytest.raises(ConfigError, match="unknown ICL task"):
        load_fv_dir(FV_FIXTURES, ["antonym"])


@pytest.mark.parametrize("items_per_task", [50, 100])
@pytest.mark.parametrize("task", TASKS)
def test_no_constant_answer_scores_more_than_in_the_original_data(task, items_per_task) -> None:
    """The most frequent answer among a task's queries is no more frequent than in the
    Function Vectors files (or than two items): a constant guess gains nothing here."""
    from bl_core.config import ICLConfig
    from bl_core.icl import load_task_items, query_indices, trivial_baselines
    from bl_core.probes import FV_TOP_ANSWER_SHARE

    items = load_task_items(ICLConfig(tasks=(task,), items_per_task=items_per_task))[task]
    queries = [items[i] for i in query_indices(task, len(items), items_per_task)]
    constant = trivial_baselines(queries)["constant"]
    assert constant <= max(FV_TOP_ANSWER_SHARE[task], 2 / items_per_task) + 1e-9


def test_trivial_baselines_of_list_and_word_tasks() -> None:
    from bl_core.icl import trivial_baselines

    lists = [ProbeItem("a, b, c", "a"), ProbeItem("d, e, f", "f"), ProbeItem("g, h, i", "a")]
    assert trivial_baselines(lists) == {"constant": 2 / 3, "chance": (1 / 3 + 1 / 3) / 3}
    words = [ProbeItem("cat", "3"), ProbeItem("dog", "3"), ProbeItem("mouse", "5")]
    assert trivial_baselines(words) == {"constant": 2 / 3, "chance": 0.0}
