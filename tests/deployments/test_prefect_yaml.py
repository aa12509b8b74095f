"""deployments/prefect.yaml and prefect-docker.yaml: entrypoints resolve to the flows their
deployments are named after, names are unique per flow, and the docker pool asks for GPUs.

The entrypoints are read from the source (ast) so these tests stay fast; one test imports the
flows, as `prefect deploy` does, and checks the same names against the real flow objects."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PREFECT_FILES = ("deployments/prefect.yaml", "deployments/prefect-docker.yaml")
POOLS = {"deployments/prefect.yaml": "bl-local", "deployments/prefect-docker.yaml": "bl-gpu"}
DOCKER_FILE = "deployments/prefect-docker.yaml"


def load(path: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / path).read_text())


def all_deployments() -> list[tuple[str, dict[str, Any]]]:
    return [(path, d) for path in PREFECT_FILES for d in load(path)["deployments"]]


def deployment_id(item: tuple[str, dict[str, Any]]) -> str:
    path, deployment = item
    return f"{Path(path).stem}:{deployment['entrypoint']}:{deployment['name']}"


def flow_definition(entrypoint: str) -> tuple[str, list[str]]:
    """``flows/grid.py:full_grid`` -> (the flow's name, its parameter names), from the source.
    Prefect's default name, as for an undecorated name, is the function's with dashes."""
    path, _, function = entrypoint.partition(":")
    source = ROOT / path
    assert source.is_file(), f"{entrypoint}: no file {path}"
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            for decorator in node.decorator_list:
                call = decorator if isinstance(decorator, ast.Call) else None
                target = call.func if call else decorator
                if getattr(target, "id", getattr(target, "attr", None)) != "flow":
                    continue
                names = [k.value for k in (call.keywords if call else []) if k.arg == "name"]
                flow_name = names[0].value if names else function.replace("_", "-")
                params = [a.arg for a in node.args.args + node.args.kwonlyargs]
                return flow_name, params
            raise AssertionError(f"{entrypoint}: {function} is not decorated with @flow")
    raise AssertionError(f"{entrypoint}: no function {function} in {path}")


@pytest.mark.parametrize("path", PREFECT_FILES)
def test_first_line_is_the_deploy_command(path: str) -> None:
    first = (ROOT / path).read_text().splitlines()[0]
    assert first.startswith("# ") and "deploy" in first and f"--prefect-file {path}" in first


@pytest.mark.parametrize("item", all_deployments(), ids=deployment_id)
def test_entrypoint_resolves_to_a_flow(item: tuple[str, dict[str, Any]]) -> None:
    path, deployment = item
    flow_name, params = flow_definition(deployment["entrypoint"])
    unknown = set(deployment.get("parameters", {})) - set(params)
    assert not unknown, f"{flow_name}/{deployment['name']}: no such parameter(s) {unknown}"
    assert deployment["work_pool"]["name"] == POOLS[path]


@pytest.mark.parametrize("path", PREFECT_FILES)
def test_deployment_names_are_unique_per_flow(path: str) -> None:
    """`prefect deployment run <flow>/<deployment>` must name exactly one deployment."""
    names = [
        f"{flow_definition(d['entrypoint'])[0]}/{d['name']}" for d in load(path)["deployments"]
    ]
    assert len(names) == len(set(names)), sorted(names)


def test_docker_file_covers_every_flow_on_paper_and_tiny() -> None:
    names = {
        f"{flow_definition(d['entrypoint'])[0]}/{d['name']}"
        for d in load(DOCKER_FILE)["deployments"]
    }
    flows = ("full-grid", "single-run", "ablations")
    assert names == {f"{flow}/{preset}-gpu" for flow in flows for preset in ("paper", "tiny")}


def test_docker_header_says_how_to_create_the_pool() -> None:
    assert "prefect work-pool create bl-gpu --type docker" in (ROOT / DOCKER_FILE).read_text()


@pytest.mark.parametrize(
    "deployment",
    load(DOCKER_FILE)["deployments"],
    ids=lambda d: f"{d['entrypoint'].partition(':')[2]}/{d['name']}",
)
def test_docker_job_variables(deployment: dict[str, Any]) -> None:
    """The GPU request of ../shared/NOTES.md, the shared volume, the servers' addresses."""
    job = deployment["work_pool"]["job_variables"]
    assert job["container_create_kwargs"] == {
        "device_requests": [{"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}],
        "shm_size": "16g",
    }
    image, _, tag = job["image"].rpartition(":")
    assert image.endswith("budgeted-lora-gpu") and tag and tag != "latest"
    assert "bl-shared:/shared" in job["volumes"]
    assert job["network_mode"] == "host"  # the servers are on the host's 127.0.0.1
    env = job["env"]
    assert all(isinstance(v, str) for v in env.values()), "docker wants string env values"
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert int(env["BL_MAX_WORKERS"]) >= 1


@pytest.mark.parametrize(
    "deployment",
    load(DOCKER_FILE)["deployments"],
    ids=lambda d: f"{d['entrypoint'].partition(':')[2]}/{d['name']}",
)
def test_docker_runs_write_and_track_centrally(deployment: dict[str, Any]) -> None:
    params = deployment["parameters"]
    assert params["output_dir"].startswith("/shared/")
    # the central MLflow server, through the environment tasks/tracking.py honours
    env = deployment["work_pool"]["job_variables"]["env"]
    assert env["MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:")


def test_docker_runs_start_in_the_images_project_directory() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile.gpu").read_text()
    workdir = re.findall(r"^WORKDIR\s+(\S+)", dockerfile, re.MULTILINE)[-1]
    [step] = load(DOCKER_FILE)["pull"]
    assert step["prefect.deployments.steps.set_working_directory"]["directory"] == workdir


@pytest.mark.slow  # imports torch, transformers and prefect: ~5-10 s unless already imported
def test_entrypoints_load_the_named_flows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What `prefect deploy` does: import each entrypoint; its flow has the name the source
    says, accepts the deployment's parameters, and they give a valid configuration."""
    import importlib

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))  # importing prefect must not touch ~

    from flows.preflight import grid_config

    for _, deployment in all_deployments():
        module_path, _, function = deployment["entrypoint"].partition(":")
        module = importlib.import_module(module_path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, function)
        params = deployment.get("parameters", {})
        assert flow.name == flow_definition(deployment["entrypoint"])[0]
        inspect.signature(flow.fn).bind(**params)
        grid_config(params.get("config", "tiny"), params.get("overrides"), None, None, None)
    from flows.ablations import ablations
    from flows.grid import full_grid, single_run

    assert (full_grid.name, single_run.name, ablations.name) == (
        "full-grid",
        "single-run",
        "ablations",
    )
