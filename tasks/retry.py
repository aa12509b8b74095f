"""Which stage failures are worth a retry (issue 17, item 7).

Only what can go away by itself: running out of (device) memory, a preempted or lost
device, an I/O or network timeout. A project error — bad input (:class:`BLError`: a missing
path, a damaged file, a config problem), a training error, a bug — fails the stage at once:
retrying a deterministic error only delays the failure (a micro grid whose students could
not be loaded took over 10 minutes of 30 s retry delays instead of one).
"""

from __future__ import annotations

import errno
from typing import Any

from bl_core.errors import BLError
from bl_core.interrupt import Interrupted

# OSError numbers of I/O that can succeed when tried again (shared volumes, networks).
_TRANSIENT_ERRNOS = {
    errno.EIO,
    errno.EAGAIN,
    errno.EBUSY,
    errno.ETIMEDOUT,
    errno.ESTALE,
    errno.ENETDOWN,
    errno.ENETUNREACH,
    errno.ENETRESET,
    errno.EHOSTUNREACH,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ECONNREFUSED,
    errno.ENOLCK,
}
# Messages of torch/CUDA/NCCL errors raised as plain RuntimeErrors.
_TRANSIENT_MESSAGES = (
    "out of memory",
    "cuda error: unspecified launch failure",
    "cuda error: an illegal memory access",  # often a lost/reset device
    "ecc error",
    "device not ready",
    "no cuda gpus are available",
    "cuda-capable device(s) is/are busy or unavailable",
    "nccl",
    "connection reset",
    "timed out",
)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def is_transient(exc: BaseException) -> bool:
    """True for out-of-memory, lost-device and I/O-timeout errors; False for everything
    else (bad input, damaged files, training errors, bugs)."""
    chain = _chain(exc)
    if any(isinstance(e, (BLError, Interrupted)) for e in chain):
        return False
    for e in chain:
        if isinstance(e, (MemoryError, TimeoutError, ConnectionError)):
            return True
        if type(e).__name__ in ("OutOfMemoryError", "AcceleratorError"):  # torch's
            return True
        if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
            return True
        if isinstance(e, RuntimeError) and any(m in str(e).lower() for m in _TRANSIENT_MESSAGES):
            return True
    return False


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed stage only for a transient error."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # noqa: BLE001 - an unreadable result: do not retry blindly
            return False
    return isinstance(exc, BaseException) and is_transient(exc)
