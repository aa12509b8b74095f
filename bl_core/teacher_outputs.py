"""Where a distillation step gets the teacher's outputs from (DESIGN §6, §6a).

The teacher's outputs on the training tokens do not depend on the student, so the cells of
one teacher need not each run it again:

    online   OnlineTeacher   the teacher's forward on every batch, in the step (one cell)
    shared   SharedTeacher   one forward per batch for a lockstep cohort of cells that read
                             the same batch (exact: the very same logits tensor)
    sparse   StoredTeacher   top-k logits per position, computed once by
                             :func:`write_teacher_store` and read by sequence index

Every provider answers ``for_batch(indices, ids)`` with the teacher outputs of the packed
sequences ``indices`` (whose tokens are ``ids``): dense logits ``(B, T, V)`` or a
:class:`SparseLogits` over the ``T - 1`` positions the loss uses.

Sparse store (a directory, written atomically), for ``R`` stored sequences of ``T`` tokens:

    meta.json       {"top_k", "temperature", "vocab_size", "seq_len", "num_rows", ...}
    sequences.npy   (R,) int64: the packed-sequence index of each stored row
    values.npy      (R, T-1, k) float32: the teacher's k largest logits, raw (no T)
    token_ids.npy   (R, T-1, k) uint16/int32: their token ids
    log_norm.npy    (R, T-1) float32: log sum_v exp(z_v / T) over the shared vocabulary

(``.npy`` files, read memory-mapped: any data order and any number of processes read the
rows they need.)

The selection of the k logits does not depend on ``T``; the log-normaliser does, so a new
``T`` or ``k`` is a new store. Bytes per position: ``k * (4 + id bytes) + 4``.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from bl_core.errors import InputError
from bl_core.io import atomic_directory, atomic_write_json
from bl_core.packing import PackedDataset
from bl_core.sampling import batch_indices

STORE_FORMAT = "budgeted-lora-teacher-topk"
STORE_VERSION = 1


@dataclass
class SparseLogits:
    """A teacher's top-k logits per position: ``values`` / ``token_ids`` (B, P, k),
    ``log_norm`` (B, P) at the store's temperature; ``P`` = positions the loss counts."""

    values: Tensor
    token_ids: Tensor
    log_norm: Tensor
    temperature: float

    def to(self, device: torch.device) -> SparseLogits:
        return SparseLogits(
            self.values.to(device, non_blocking=True),
            self.token_ids.to(device, non_blocking=True),
            self.log_norm.to(device, non_blocking=True),
            self.temperature,
        )

    def rows(self, batch: int, positions: slice) -> SparseLogits:
        """One sequence's chunk of positions: values (N, k), token_ids (N, k), log_norm (N,)."""
        return SparseLogits(
            self.values[batch, positions],
            self.token_ids[batch, positions],
            self.log_norm[batch, positions],
            self.temperature,
        )

    @property
    def top_k(self) -> int:
        return self.values.shape[-1]


TeacherBatch = Tensor | SparseLogits


class TeacherOutputs(Protocol):
    """What training asks of a source of teacher outputs."""

    seconds: float  # time spent producing outputs so far

    def for_batch(self, indices: Sequence[int], ids: Tensor) -> TeacherBatch: ...


class OnlineTeacher:
    """The teacher's forward on each batch (no grad, eval mode). ``seconds``: time spent."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.seconds = 0.0

    def _forward(self, ids: Tensor) -> Tensor:
        start = time.perf_counter()
        with torch.no_grad():
            logits = self.model(input_ids=ids).logits
        self.seconds += time.perf_counter() - start
        return logits

    def for_batch(self, indices: Sequence[int], ids: Tensor) -> TeacherBatch:
        return self._forward(ids)


class SharedTeacher(OnlineTeacher):
    """One forward per distinct batch for a lockstep cohort (DESIGN §6a, exact form).

    Cells of one seed read the same sequences at the same step, so the first cell to ask
    computes the logits and the others get the same tensor. The last ``capacity`` batches
    are kept (one step's micro-batches for every seed of the cohort).
    """

    def __init__(self, model: nn.Module, capacity: int = 1) -> None:
        super().__init__(model)
        self.capacity = max(1, capacity)
        self._cache: OrderedDict[tuple[int, ...], Tensor] = OrderedDict()
        self.num_forwards = 0
        self.num_requests = 0

    def for_batch(self, indices: Sequence[int], ids: Tensor) -> TeacherBatch:
        key = (ids.device.index or 0, *map(int, indices))
        self.num_requests += 1
        if key not in self._cache:
            self._cache[key] = self._forward(ids)
            self.num_forwards += 1
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return self._cache[key]


def sequences_read(reads: Iterable[dict[str, int]], num_sequences: int) -> list[int]:
    """Sorted packed-sequence indices that training runs read, each run given as
    ``{"seed", "steps", "micro_batch_size", "grad_accum_steps", "world_size"}``
    (:func:`bl_core.sampling.batch_indices` is a pure function of these)."""
    needed: set[int] = set()
    for r in reads:
        per_step = r["micro_batch_size"] * r["grad_accum_steps"] * r["world_size"]
        if r["steps"] * per_step >= num_sequences:  # at least one whole epoch: all of them
            return list(range(num_sequences))
        for step in range(r["steps"]):
            for micro in range(r["grad_accum_steps"]):
                for rank in range(r["world_size"]):
                    needed.update(
                        batch_indices(
                            step,
                            micro,
                            r["micro_batch_size"],
                            r["grad_accum_steps"],
                            r["seed"],
                            num_sequences,
                            rank,
                            r["world_size"],
                        )
                    )
    return sorted(needed)


def _id_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<i4")


def store_bytes_per_position(top_k: int, vocab_size: int) -> int:
    """Disk bytes per stored position: k values, k token ids and one log-normaliser."""
    return top_k * (4 + _id_dtype(vocab_size).itemsize) + 4


@torch.no_grad()
def topk_outputs(
    logits: Tensor, top_k: int, temperature: float, vocab_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``(values, token_ids, log_norm)`` of ``logits`` (B, T, V*) over the first
    ``vocab_size`` entries and the ``T - 1`` positions the loss uses (float32)."""
    z = logits[:, :-1, :vocab_size].float()  # (B, T-1, V)
    values, token_ids = z.topk(top_k, dim=-1)  # (B, T-1, k); T plays no part in the choice
    log_norm = torch.logsumexp(z / temperature, dim=-1)  # (B, T-1)
    return values, token_ids, log_norm


def write_teacher_store(
    teacher: nn.Module,
    data: PackedDataset,
    sequences: Sequence[int],
    out_dir: str | Path,
    *,
    top_k: int,
    temperature: float,
    vocab_size: int,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: Any = None,
) -> dict[str, Any]:
    """Run ``teacher`` over the packed ``sequences`` once and write their top-k outputs to
    ``out_dir`` (atomically: the directory appears complete or not at all)."""
    if not 1 <= top_k <= vocab_size:
        raise InputError(f"kd.teacher_top_k={top_k}: must be in [1, vocab size {vocab_size}]")
    seq_len = int(data.meta["seq_len"])
    rows, positions = len(sequences), seq_len - 1
    id_dtype = _id_dtype(vocab_size)
    teacher = teacher.to(device).eval()
    start = time.perf_counter()
    with atomic_directory(out_dir, overwrite=True) as tmp:
        np.save(tmp / "sequences.npy", np.asarray(sequences, dtype=np.int64))
        arrays = {
            name: np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dt, shape=shape)
            for name, dt, shape in (
                ("values", np.float32, (rows, positions, top_k)),
                ("token_ids", id_dtype, (rows, positions, top_k)),
                ("log_norm", np.float32, (rows, positions)),
            )
        }
        for begin in range(0, rows, batch_size):
            batch = sequences[begin : begin + batch_size]
            ids = torch.stack([data[i]["input_ids"] for i in batch]).to(device)
            values, token_ids, norm = topk_outputs(
                teacher(input_ids=ids).logits, top_k, temperature, vocab_size
            )
            end = begin + len(batch)
            arrays["values"][begin:end] = values.cpu().numpy()
            arrays["token_ids"][begin:end] = token_ids.cpu().numpy().astype(id_dtype)
            arrays["log_norm"][begin:end] = norm.cpu().numpy()
            if progress is not None:
                progress(end, rows)
        for array in arrays.values():
            array.flush()
        meta = {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            "top_k": top_k,
            "temperature": temperature,
            "vocab_size": vocab_size,
            "seq_len": seq_len,
            "num_rows": rows,
            "token_id_dtype": id_dtype.name,
            "bytes_per_position": store_bytes_per_position(top_k, vocab_size),
            "bytes": rows * positions * store_bytes_per_position(top_k, vocab_size),
            "teacher_forward_s": time.perf_counter() - start,
            "data_fingerprint": data.meta.get("fingerprint"),
        }
        atomic_write_json(tmp / "meta.json", meta)  # last: its presence marks a whole store
    return meta


class StoredTeacher:
    """Reads a store written by :func:`write_teacher_store` by packed-sequence index."""

    def __init__(self, store_dir: str | Path, temperature: float, vocab_size: int) -> None:
        self.store_dir = Path(store_dir)
        meta_path = self.store_dir / "meta.json"
        try:
            self.meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(
                f"teacher store {str(self.store_dir)!r} is unreadable: {err}"
            ) from None
        if self.meta.get("format") != STORE_FORMAT:
            raise InputError(f"{str(meta_path)!r} is not a teacher top-k store")
        if self.meta["temperature"] != temperature or self.meta["vocab_size"] != vocab_size:
            raise InputError(
                f"teacher store {str(self.store_dir)!r} was written at temperature "
                f"{self.meta['temperature']} over {self.meta['vocab_size']} tokens, not "
                f"{temperature} / {vocab_size}"
            )
        sequences = np.load(self.store_dir / "sequences.npy")
        self.row_of = {int(s): r for r, s in enumerate(sequences)}
        self.values = np.load(self.store_dir / "values.npy", mmap_mode="r")
        self.token_ids = np.load(self.store_dir / "token_ids.npy", mmap_mode="r")
        self.log_norm = np.load(self.store_dir / "log_norm.npy", mmap_mode="r")
        self.temperature = temperature
        self.seconds = 0.0

    def for_batch(self, indices: Sequence[int], ids: Tensor) -> TeacherBatch:
        start = time.perf_counter()
        try:
            rows = [self.row_of[int(i)] for i in indices]
        except KeyError as err:
            raise InputError(
                f"teacher store {str(self.store_dir)!r} has no outputs for packed sequence "
                f"{err.args[0]}: it was written for other training runs"
            ) from None
        batch = SparseLogits(
            torch.from_numpy(np.ascontiguousarray(self.values[rows])),
            torch.from_numpy(np.ascontiguousarray(self.token_ids[rows]).astype(np.int64)),
            torch.from_numpy(np.ascontiguousarray(self.log_norm[rows])),
            self.temperature,
        ).to(ids.device)
        self.seconds += time.perf_counter() - start
        return batch
