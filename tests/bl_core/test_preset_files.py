"""``--config`` resolution (bl_core/preset_files.py): presets win unless it looks like a path."""

from __future__ import annotations

import pytest

from bl_core.errors import ConfigError
from bl_core.preset_files import resolve_config


def test_a_same_named_directory_does_not_shadow_a_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "micro").mkdir()  # e.g. an output directory named after the preset
    (tmp_path / "micro" / "micro.yaml").write_text("not: a config\n")
    cfg, preset = resolve_config("micro")
    assert preset == "micro" and cfg.teachers[0].name == "micro-s"


def test_a_path_is_read_as_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("lora: {rank: 4}\n")
    assert resolve_config("mine.yaml")[0].lora.rank == 4
    assert resolve_config("./mine.yaml")[1] == "mine"
    with pytest.raises(ConfigError, match="'missing.yaml' does not exist"):
        resolve_config("missing.yaml")


def test_an_unknown_name_lists_the_presets_and_the_path_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").write_text("lora: {rank: 4}\n")
    with pytest.raises(ConfigError, match=r"'mine' is not a preset .*micro.*write ./mine"):
        resolve_config("mine")


def test_the_cli_resolves_a_name_once_to_the_preset_file(tmp_path, monkeypatch):
    from bl_core.preset_files import PRESETS_DIR, config_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "micro").mkdir()
    path = config_path("micro")
    assert path == PRESETS_DIR / "micro.yaml"
    assert resolve_config(str(path))[1] == "micro"  # the flow gets the same preset name
