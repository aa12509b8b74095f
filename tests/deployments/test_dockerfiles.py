"""docker/Dockerfile.cpu and Dockerfile.gpu: a non-root user, no secrets, pinned bases, and a
torch pip cannot replace. Read as text: nothing is built here (no Docker engine in CI)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ("Dockerfile.cpu", "Dockerfile.gpu")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.IGNORECASE)


def instructions(name: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order, continuation lines joined, comments dropped."""
    joined, current = [], ""
    for line in (ROOT / "docker" / name).read_text().splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    pairs = [line.strip().split(None, 1) for line in joined if line.strip()]
    return [(p[0].upper(), p[1] if len(p) == 2 else "") for p in pairs]


def variables(args: str) -> dict[str, str | None]:
    """``ENV A=1 B="x y"`` / ``ENV A 1`` / ``ARG A=1`` / ``ARG A`` -> {name: value or None}."""
    tokens = shlex.split(args)
    if tokens and "=" not in tokens[0] and len(tokens) > 1:  # legacy `ENV KEY value`
        return {tokens[0]: " ".join(tokens[1:])}
    return {k: (v if sep else None) for k, sep, v in (t.partition("=") for t in tokens)}


@pytest.mark.parametrize("name", DOCKERFILES)
def test_first_line_is_the_build_command(name: str) -> None:
    first = (ROOT / "docker" / name).read_text().splitlines()[0]
    assert first.startswith(f"# docker build -f docker/{name} -t budgeted-lora-")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runs_as_a_created_non_root_user(name: str) -> None:
    steps = instructions(name)
    users = [args.split(":")[0] for kind, args in steps if kind == "USER"]
    assert users, "no USER: the container would run as root"
    assert users[-1] not in ("root", "0")
    created = [args for kind, args in steps if kind == "RUN" and "useradd" in args]
    assert any(re.search(rf"useradd\b.*\b{re.escape(users[-1])}\b", run) for run in created)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_no_secret_values_in_env_or_arg(name: str) -> None:
    for kind, args in instructions(name):
        if kind in ("ENV", "ARG"):
            for key, value in variables(args).items():
                assert not (SECRET_NAME.search(key) and value), f"{kind} {key} holds a value"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_image_is_pinned(name: str) -> None:
    steps = instructions(name)
    defaults = {k: v for kind, a in steps if kind == "ARG" for k, v in variables(a).items()}
    [base] = [args.split()[0] for kind, args in steps if kind == "FROM"]
    base = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)] or "", base)
    image, _, tag = base.partition("@")[0].rpartition(":")
    assert image and tag and tag != "latest", base


@pytest.mark.parametrize("name", DOCKERFILES)
def test_torch_is_pinned_before_the_dependencies_install(name: str) -> None:
    """pyproject says torch>=2.4: without a constraint on the installed build, pip may swap a
    CUDA torch for another, or a CPU one for PyPI's multi-GB CUDA wheels."""
    steps = instructions(name)
    runs = [args for kind, args in steps if kind == "RUN"]
    constrain = next(i for i, run in enumerate(runs) if "pip-constraints.txt" in run)
    install = next(i for i, run in enumerate(runs) if "pip install -r" in run)
    assert constrain < install
    env = {k: v for kind, a in steps if kind == "ENV" for k, v in variables(a).items()}
    assert env.get("PIP_CONSTRAINT") == "/etc/pip-constraints.txt"
    assert env.get("PREFECT_SERVER_ANALYTICS_ENABLED") == "false"
    assert "HF_HUB_OFFLINE" not in env  # users may need the hub (the paper preset streams it)


def test_cpu_image_takes_torch_from_the_cpu_index() -> None:
    runs = [args for kind, args in instructions("Dockerfile.cpu") if kind == "RUN"]
    assert any("--index-url https://download.pytorch.org/whl/cpu" in run for run in runs)


def test_gpu_image_builds_on_cuda_pytorch() -> None:
    steps = instructions("Dockerfile.gpu")
    defaults = {k: v for kind, a in steps if kind == "ARG" for k, v in variables(a).items()}
    assert re.match(r"^pytorch/pytorch:[\d.]+-cuda[\d.]+-cudnn\d+-runtime$", defaults["BASE_IMAGE"])


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copied_paths_exist(name: str) -> None:
    for kind, args in instructions(name):
        if kind == "COPY":
            *sources, _ = args.split()
            assert all((ROOT / s).exists() for s in sources if not s.startswith("--")), args
