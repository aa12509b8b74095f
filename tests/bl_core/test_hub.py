"""Models by Hugging Face Hub id (``org/name``, optional revision), offline: an id in the
local cache resolves to its snapshot; an unknown one is one clear error naming the id and
HF_HUB_OFFLINE, from the library and from ``bl eval`` / ``bl plan``."""

from __future__ import annotations

import json

import pytest
from conftest import make_checkpoint
from huggingface_hub import constants

from bl_core.cli import main
from bl_core.config import config_from_dict
from bl_core.data import resolve_tokenizer_path
from bl_core.errors import ConfigError, InputError
from bl_core.hub import resolve_model_config, resolve_model_dir
from bl_core.student import load_pretrained

MISSING = "no-such-org/no-such-model"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline Hub cache holding ``org/tiny`` at main and at revision ``v1`` (another
    snapshot), laid out as huggingface_hub stores downloads."""
    cache = tmp_path / "hub"
    repo = cache / "models--org--tiny"
    for ref, commit, seed in (("main", "a" * 40, 1), ("v1", "b" * 40, 2)):
        make_checkpoint("llama", repo / "snapshots" / commit, seed=seed, num_layers=2 + seed)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return repo


def test_a_cached_id_resolves_to_its_snapshot_at_the_revision(hub_cache):
    main_dir = resolve_model_dir("org/tiny")
    assert main_dir.endswith("snapshots/" + "a" * 40)
    assert load_pretrained(main_dir).config.num_hidden_layers == 3
    v1 = resolve_model_dir("org/tiny", revision="v1")
    assert load_pretrained(v1).config.num_hidden_layers == 4
    assert resolve_model_config("org/tiny", "v1").endswith("config.json")


def test_a_teachers_hub_id_and_revision_reach_the_ladder(hub_cache):
    cfg = config_from_dict({"teachers": [{"name": "t", "path": "org/tiny", "revision": "v1"}]})
    assert resolve_tokenizer_path(cfg) == resolve_model_dir("org/tiny", revision="v1")


def test_an_unknown_id_offline_names_the_id_and_hf_hub_offline(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InputError) as err:
        resolve_model_dir(MISSING, revision="v2", what="teacher '1B'")
    message = str(err.value)
    assert f"teacher '1B' {MISSING!r} at revision 'v2'" in message
    assert "HF_HUB_OFFLINE=1" in message and "hf download" in message
    with pytest.raises(InputError, match="HF_HUB_OFFLINE"):
        resolve_model_config(MISSING)


@pytest.mark.parametrize(
    "argv", [["eval", MISSING, "--icl"], ["plan", "--model-config", MISSING, "--json"]]
)
def test_bl_eval_and_plan_fail_in_one_line_naming_the_id(argv, capsys, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and MISSING in err and "HF_HUB_OFFLINE" in err


def test_bl_plan_takes_a_cached_id(hub_cache, capsys):
    assert main(["plan", "--model-config", "org/tiny", "--student-layers", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["student_layer_indices"] == [0, 2]


def test_local_paths_and_revisions_are_checked(tmp_path):
    with pytest.raises(InputError, match="revision 'v1' applies to Hub ids"):
        resolve_model_dir(str(tmp_path), revision="v1")
    with pytest.raises(InputError, match="does not exist"):
        resolve_model_dir(str(tmp_path / "a" / "b"))
    with pytest.raises(ConfigError, match="revision applies to a Hub id path only"):
        config_from_dict({"teachers": [{"name": "t", "arch": {}, "revision": "v1"}]})
