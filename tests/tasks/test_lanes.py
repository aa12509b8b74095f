"""A teacher's cohort split over CPU processes (``pipeline.cohort_lanes``, tasks/lanes.py)
trains every cell to the same weights as the cohort in one process; a lane that dies fails
only its own cells, with its error; a stop request leaves no finished-looking run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bl_core import interrupt
from bl_core.config import config_from_dict
from bl_core.interrupt import Interrupted
from bl_core.packing import pack_documents
from bl_core.student import build_student
from tasks.distill import train_cohort, training_sections
from tasks.lanes import split_lanes

# tests/conftest.py's helpers (a plain `from conftest import` finds tests/flows/conftest.py
# when the whole suite is collected).
_spec = importlib.util.spec_from_file_location(
    "_root_conftest", Path(__file__).parents[1] / "conftest.py"
)
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)
make_mistral, make_tokenizer = _helpers.make_mistral, _helpers.make_tokenizer

SEQ = 32
CELLS = [("kd_full", None), ("kd_lora", None), ("budgeted", 0.0), ("budgeted", 0.4)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lanes")
    texts = [f"Q:apple\nA:Apple\n\nThe quick fox {i} jumps over the dog." * 3 for i in range(40)]
    pack_documents(texts, make_tokenizer(), SEQ, root / "train")
    teacher = make_mistral(seed=1, num_layers=4)
    teacher.save_pretrained(root / "teacher")
    build_student(teacher, 2, "mixed").save_pretrained(root / "student")
    config = config_from_dict(
        {
            "train": {
                "total_tokens": 6 * 4 * SEQ,
                "micro_batch_size": 4,
                "learning_rate": 1e-2,
                "log_every": 2,
                "checkpoint_every": 3,
            },  # fmt: skip
            "lora": {"rank": 4, "lora_alpha": 8, "dropout": 0.1},  # dropout: RNG streams matter
            "budget": {"ema_beta": 0.5},
        }
    ).model_dump(mode="json")
    return root, config


def _cohort(setup, out: Path, lanes: int, broken: str | None = None) -> dict:
    """``broken``: a cell whose warm start is missing (its lane dies loading it)."""
    root, config = setup
    out.mkdir(parents=True, exist_ok=True)
    student = {"model_dir": str(root / "student"), "fingerprint": "student"}
    cells = [
        {
            "label": f"{method}-{fraction}",
            "method": method,
            "final_fraction": fraction,
            "seed": 0,
            "sections": training_sections(method, config),
            "student": student | (
                {"model_dir": str(out / "no-such-student")} if broken == method else {}
            ),
        }
        for method, fraction in CELLS
    ]  # fmt: skip
    teacher = {"name": "t", "model_dir": str(root / "teacher"), "fingerprint": "teacher"}
    data = {"packed_dir": str(root / "train"), "fingerprint": "data"}
    return train_cohort(str(out), teacher, cells, data, {"vocab_size": 300}, lanes)


def _finals(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {
        p.parent.parent.name: load_file(str(p))
        for p in sorted(out.glob("stages/distill/*/final/model.safetensors"))
    }


def test_split_lanes_is_round_robin_and_never_empty():
    members = [{"label": str(i)} for i in range(5)]
    assert [[m["label"] for m in lane] for lane in split_lanes(members, 2)] == [
        ["0", "2", "4"],
        ["1", "3"],
    ]
    assert len(split_lanes(members[:1], 4)) == 1


def test_two_lanes_train_the_same_weights_as_one_process(setup, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each of the two lanes gets on a 2-core machine
    try:
        one = _cohort(setup, tmp_path / "one", lanes=1)
    finally:
        torch.set_num_threads(threads)
    torch.set_num_threads(2)  # -> 2 lanes x 1 thread
    try:
        two = _cohort(setup, tmp_path / "two", lanes=2)
    finally:
        torch.set_num_threads(threads)
    assert set(one["cells"].values()) == set(two["cells"].values()) == {"ok"}
    assert one["cells"].keys() == two["cells"].keys()
    assert one["forwards"] == 6 and two["forwards"] == 2 * 6  # each lane runs the teacher
    a, b = _finals(tmp_path / "one"), _finals(tmp_path / "two")
    assert a.keys() == b.keys() and len(a) == 4  # same run directories: same cache keys
    for run in a:
        assert all(torch.equal(a[run][k], b[run][k]) for k in a[run]), run
    assert not list((tmp_path / "two").glob("stages/distill/cohort-lane*"))  # specs cleaned


def test_a_dead_lane_fails_only_its_cells_with_its_error(setup, tmp_path):
    cells = _cohort(setup, tmp_path, lanes=2, broken="kd_lora")["cells"]
    # round robin: lane 0 = kd_full, budgeted F=0; lane 1 = kd_lora, budgeted F=0.4
    assert cells["kd_full-None"] == cells["budgeted-0.0"] == "ok"
    for label in ("kd_lora-None", "budgeted-0.4"):
        assert "cohort lane exited with code 1" in cells[label], cells[label]
        assert "no-such-student" in cells[label]


def test_a_stop_request_reaches_every_lane_and_leaves_no_finished_run(setup, tmp_path):
    interrupt.request_stop()
    try:
        with pytest.raises(Interrupted):
            _cohort(setup, tmp_path, lanes=2)
    finally:
        interrupt.reset()
    assert not list(tmp_path.glob("stages/distill/*/summary.json"))
    assert not list(tmp_path.glob("stages/distill/cohort-lane*"))
