"""Atomic writes (bl_core/io.py): artifacts get the modes the umask gives (issue 17)."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from bl_core.io import atomic_directory, atomic_write_json, atomic_write_text, current_umask
from bl_core.train_state import save_checkpoint


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_and_directories_follow_the_umask(tmp_path, umask):
    assert current_umask() == umask
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_write_json(tmp_path / "b.json", {"a": 1})
    with atomic_directory(tmp_path / "stage") as tmp:
        (tmp / "inner.txt").write_text("y")
        atomic_write_text(tmp / "nested.txt", "z")
    assert _mode(tmp_path / "a.txt") == _mode(tmp_path / "b.json") == 0o666 & ~umask
    assert _mode(tmp_path / "stage") == 0o777 & ~umask
    assert _mode(tmp_path / "stage" / "nested.txt") == 0o666 & ~umask
    assert _mode(tmp_path / "stage" / "inner.txt") == 0o666 & ~umask


def test_checkpoints_follow_the_umask(tmp_path, umask):
    model = torch.nn.Linear(2, 2)
    ckpt = save_checkpoint(tmp_path, 1, model, {"optimizer": {}}, [{}], {"tokens": 0})
    assert _mode(ckpt) == 0o777 & ~umask
    for file in ckpt.iterdir():
        assert _mode(file) == 0o666 & ~umask, file.name
