import os
import subprocess
import sys
import textwrap

import pytest

from bl_core.allocator import ENV_VAR, tune_cpu_allocator

# Allocate and free a 64 MB block 8 times; print the page faults of each round after the
# first two (glibc settles after two).
_SCRIPT = textwrap.dedent(
    """
    import resource, torch
    import bl_core.training  # as in a run: the stack is loaded (bl_core imports lazily)
    from bl_core.allocator import tune_cpu_allocator
    print(tune_cpu_allocator())
    faults = []
    for i in range(8):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(16 * 1024 * 1024).fill_(1.0)  # 64 MB, freed at once
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(*faults[2:])
    """
)
PAGES_PER_ROUND = 64 * 1024 * 1024 // 4096


def _faults(env_value: str | None) -> tuple[str, list[int]]:
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    if env_value is not None:
        env[ENV_VAR] = env_value
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return out[0], [int(x) for x in out[1].split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tuned_allocator_reuses_large_blocks_instead_of_faulting_them_in_again():
    applied, faults = _faults(None)
    default_applied, default_faults = _faults("default")
    assert (applied, default_applied) == ("True", "False")
    # glibc's default maps fresh pages for every block; tuned, the freed block is reused.
    # (A round may still fault if the host reclaims idle memory, hence "most rounds".)
    assert all(f > PAGES_PER_ROUND // 2 for f in default_faults), default_faults
    assert sum(f < PAGES_PER_ROUND // 20 for f in faults) >= len(faults) // 2, faults


def test_opt_out_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "default")
    assert tune_cpu_allocator() is False
