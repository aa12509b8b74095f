"""Host-memory allocator settings for CPU training and inference.

With glibc's defaults, large blocks — the logits (1024 x 32000 float32 = 131 MB), the
outputs of the big projections (12.6 MB at 1024 tokens x 3072) — are ``mmap``-ed and
``munmap``-ed on every call, so each step page-faults and zeroes them again. Measured on
the paper student (2-core CPU): ~46k minor faults per pass over the 42 projections, and
the KD loss's forward + backward going from 1.9 s to 0.65 s once memory is kept. That
fixed cost is paid alike by every method, so it also hides what compression and the
budget save. Keeping freed memory in the process is what tcmalloc or jemalloc (PyTorch's
CPU performance guide recommends either) do; :func:`tune_cpu_allocator` gets the same
from glibc with two ``mallopt`` calls.

Called by the ``bl`` command, the pipeline's flows and the benchmarks. Set
``BL_CPU_ALLOCATOR=default`` to leave the allocator alone (e.g. with a preloaded
jemalloc, or to measure the difference).
"""

from __future__ import annotations

import ctypes
import os

# mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD_BYTES = 1 << 30  # give memory back only when 1 GiB sits free at the top

ENV_VAR = "BL_CPU_ALLOCATOR"


def tune_cpu_allocator() -> bool:
    """Serve large blocks from the heap and keep up to 1 GiB of freed memory (glibc).

    Process-wide and idempotent. Returns ``True`` when the settings were applied,
    ``False`` when ``BL_CPU_ALLOCATOR=default`` or the C library is not glibc.
    """
    if os.environ.get(ENV_VAR, "").strip().lower() == "default":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    no_mmap = mallopt(_M_MMAP_MAX, 0) == 1
    keep = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES) == 1
    return no_mmap and keep
