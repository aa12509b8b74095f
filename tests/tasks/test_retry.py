"""Retries only for transient errors (issue 17, item 7)."""

from __future__ import annotations

import errno

import pytest
import torch
from prefect.states import Failed

from bl_core.errors import ConfigError, InputError
from bl_core.training import TrainingError
from tasks.retry import is_transient, retry_transient


def _from(cause: BaseException) -> RuntimeError:
    try:
        raise RuntimeError("stage failed") from cause
    except RuntimeError as err:
        return err


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), True),
        (RuntimeError("CUDA error: out of memory"), True),
        (RuntimeError("NCCL communicator was aborted"), True),
        (MemoryError(), True),
        (TimeoutError("read timed out"), True),
        (ConnectionResetError(errno.ECONNRESET, "reset"), True),
        (OSError(errno.EIO, "Input/output error"), True),
        (OSError(errno.ESTALE, "Stale file handle"), True),
        (_from(TimeoutError("lost the volume")), True),
        (InputError("weights file 'x' is damaged (truncated)"), False),
        (ConfigError("student.num_layers=3: ..."), False),
        (TrainingError("non-finite loss nan at step 3"), False),
        (FileNotFoundError(errno.ENOENT, "No such file"), False),
        (KeyError("model_dir"), False),
        (ValueError("a bug"), False),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
        (_from(InputError("bad path")), False),
    ],
)
def test_only_transient_errors_are_retried(error, transient):
    assert is_transient(error) is transient
    assert retry_transient(None, None, Failed(data=error)) is transient


def test_grid_stages_retry_through_the_condition():
    from flows.cells import GridContext
    from tasks.distill import distill_task

    ctx = GridContext({"pipeline": {"retries": 2}}, "p", "/tmp/x", [], "g", "e", "r")
    bound = ctx.task(distill_task)
    task = bound.task  # a tasks.common.Stage around the Prefect task
    assert task.retries == 2 and task.retry_condition_fn is retry_transient
