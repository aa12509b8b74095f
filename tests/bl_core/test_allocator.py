import os
import subprocess
import sys
import textwrap

import pytest

from bl_core.allocator import ENV_VAR, tune_cpu_allocator

# Allocate and free a 64 MB block 6 times; print the page faults of the last 4 rounds
# (glibc settles after two).
_SCRIPT = textwrap.dedent(
    """
    import resource, torch
    from bl_core.allocator import tune_cpu_allocator
    print(tune_cpu_allocator())
    for i in range(6):
        if i == 2:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(16 * 1024 * 1024).fill_(1.0)  # 64 MB, freed at once
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults(env_value: str | None) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    if env_value is not None:
        env[ENV_VAR] = env_value
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tuned_allocator_reuses_large_blocks_instead_of_faulting_them_in_again():
    applied, faults = _faults(None)
    default_applied, default_faults = _faults("default")
    assert (applied, default_applied) == ("True", "False")
    pages = 4 * 64 * 1024 * 1024 // 4096  # 4 rounds of a 64 MB block in 4 KiB pages
    assert default_faults > pages // 2  # glibc's default: every round maps fresh pages
    assert faults < pages // 20  # tuned: the freed block is reused


def test_opt_out_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "default")
    assert tune_cpu_allocator() is False
