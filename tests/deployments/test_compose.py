"""docker/compose.yaml: the services, ports on loopback only, no secrets in the file, the GPU
worker. Parsed, never run: there is no Docker engine in CI."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "docker"
SERVICES = ("postgres", "prefect-server", "mlflow", "worker-cpu", "worker-gpu")
WORKERS = ("worker-cpu", "worker-gpu")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.IGNORECASE)
# ${VAR}, ${VAR:-default}, ${VAR:?message}: compose fills these from docker/.env.
REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:?[-?][^}]*)?\}$")
API_URL = "http://127.0.0.1:4200/api"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER_DIR / "compose.yaml").read_text())


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's environment as a mapping, from either compose syntax (None = pass-through)."""
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return {k: None if v is None else str(v) for k, v in env.items()}
    pairs = [item.split("=", 1) for item in env]
    return {p[0]: (p[1] if len(p) == 2 else None) for p in pairs}


def command_args(service: dict[str, Any]) -> list[str]:
    """``command`` as tokens, with ``--opt=value`` split into ``--opt``, ``value``."""
    command = service.get("command") or []
    tokens = command.split() if isinstance(command, str) else [str(t) for t in command]
    return [part for token in tokens for part in (token.split("=", 1) if "=" in token else [token])]


def option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def mask_references(text: str) -> str:
    """``${POSTGRES_USER:-bl}`` -> ``${}``, so the colons inside do not look like URL parts."""
    return re.sub(r"\$\{[^}]*\}", "${}", text)


def url_passwords(text: str) -> list[str]:
    """The password part of every ``scheme://user:password@host`` in ``text`` (masked)."""
    userinfos = re.findall(r"://([^/@\s]*)@", mask_references(text))
    return [info.partition(":")[2] for info in userinfos if ":" in info]


def published_host_ip(port: str | int | dict[str, Any]) -> str:
    """The host address a ``ports`` entry binds; "" means every interface."""
    if isinstance(port, dict):  # long syntax
        return str(port.get("host_ip", ""))
    spec = str(port).split("/")[0]  # drop /tcp, /udp
    if spec.startswith("["):  # [::1]:4200:4200
        return spec[1 : spec.index("]")]
    parts = spec.split(":")
    return parts[0] if len(parts) == 3 else ""


@pytest.mark.parametrize(
    ("port", "host_ip"),
    [
        ("127.0.0.1:4200:4200", "127.0.0.1"),
        ("127.0.0.1::4200", "127.0.0.1"),
        ("127.0.0.1:5000:5000/tcp", "127.0.0.1"),
        ("[::1]:5000:5000", "::1"),
        ("4200:4200", ""),
        ("4200", ""),
        (4200, ""),
        ({"target": 5000, "published": 5000, "host_ip": "127.0.0.1"}, "127.0.0.1"),
        ({"target": 5000, "published": 5000}, ""),
    ],
)
def test_published_host_ip_reads_short_and_long_syntax(port: Any, host_ip: str) -> None:
    assert published_host_ip(port) == host_ip


@pytest.mark.parametrize(
    ("text", "passwords"),
    [
        ("postgresql://bl:hunter2@postgres/mlflow", ["hunter2"]),
        ("postgresql://${POSTGRES_USER:-bl}@postgres:5432/mlflow", []),
        ("postgresql+asyncpg://bl:${POSTGRES_PASSWORD:?set it}@postgres/prefect", ["${}"]),
        ("http://127.0.0.1:5000", []),
    ],
)
def test_url_passwords_finds_literal_ones(text: str, passwords: list[str]) -> None:
    assert url_passwords(text) == passwords


def test_first_line_is_the_command_that_uses_it() -> None:
    first = (DOCKER_DIR / "compose.yaml").read_text().splitlines()[0]
    assert first.startswith("# docker compose -f docker/compose.yaml up")


def test_all_services_exist(compose: dict[str, Any]) -> None:
    assert set(SERVICES) <= set(compose["services"])


def test_every_published_port_binds_loopback(compose: dict[str, Any]) -> None:
    published = {
        name: [published_host_ip(p) for p in service.get("ports", [])]
        for name, service in compose["services"].items()
    }
    wrong = {name: ips for name, ips in published.items() if any(ip != "127.0.0.1" for ip in ips)}
    assert not wrong, f"ports published beyond 127.0.0.1: {wrong}"
    assert published["prefect-server"] and published["mlflow"]  # the UIs stay reachable


def test_postgres_is_not_published(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert not postgres.get("ports")
    assert postgres.get("network_mode") != "host"


def test_only_workers_share_the_host_network(compose: dict[str, Any]) -> None:
    """Host networking exposes whatever a container listens on: only the workers (which
    listen on nothing) may use it, and they must not declare ports (ignored there)."""
    host = {n for n, s in compose["services"].items() if s.get("network_mode") == "host"}
    assert host == set(WORKERS)
    assert all(not compose["services"][n].get("ports") for n in host)


def test_no_literal_secrets(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                assert value is None or REFERENCE.match(value), f"{name}: {key}={value!r}"
        for text in [*environment(service).values(), *command_args(service)]:
            for password in url_passwords(text or ""):
                assert password == "${}", f"{name}: password in a URL: {text!r}"


def test_the_database_password_is_required(compose: dict[str, Any]) -> None:
    """``${POSTGRES_PASSWORD:?...}``: compose refuses to start without one (no default)."""
    postgres = environment(compose["services"]["postgres"])
    assert re.match(r"^\$\{POSTGRES_PASSWORD:\?", postgres["POSTGRES_PASSWORD"])


def test_env_example_holds_no_secret_values() -> None:
    for line in (DOCKER_DIR / ".env.example").read_text().splitlines():
        key, sep, value = line.lstrip("# ").partition("=")
        if sep and SECRET_NAME.search(key) and " " not in key:
            assert value == "", f".env.example ships a value for {key}"


def test_servers_store_in_postgres(compose: dict[str, Any]) -> None:
    services = compose["services"]
    prefect = environment(services["prefect-server"])
    assert prefect["PREFECT_SERVER_DATABASE_DRIVER"] == "postgresql+asyncpg"
    assert prefect["PREFECT_SERVER_DATABASE_HOST"] == "postgres"
    assert (
        prefect["PREFECT_SERVER_DATABASE_NAME"] == environment(services["postgres"])["POSTGRES_DB"]
    )
    store = option(command_args(services["mlflow"]), "--backend-store-uri")
    assert store is not None
    assert re.match(r"^postgresql://\$\{\}@postgres:5432/mlflow$", mask_references(store))
    assert environment(services["mlflow"])["PGPASSWORD"].startswith("${POSTGRES_PASSWORD")
    init_sql = (DOCKER_DIR / "postgres-init.sql").read_text()
    assert re.search(r"^CREATE DATABASE mlflow;", init_sql, re.MULTILINE)
    mounts = services["postgres"]["volumes"]
    assert any(m.startswith("./postgres-init.sql:/docker-entrypoint-initdb.d/") for m in mounts)


def test_servers_listen_inside_their_containers(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert option(command_args(services["prefect-server"]), "--host") == "0.0.0.0"
    assert option(command_args(services["mlflow"]), "--host") == "0.0.0.0"


def test_workers_poll_their_pools(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, pool, worker_type in [
        ("worker-cpu", "bl-local", "process"),
        ("worker-gpu", "bl-gpu", "docker"),
    ]:
        args = command_args(services[name])
        assert args[:3] == ["prefect", "worker", "start"], name
        assert (option(args, "--pool"), option(args, "--type")) == (pool, worker_type), name
        assert environment(services[name])["PREFECT_API_URL"] == API_URL, name


def test_workers_are_stopped_with_sigint(compose: dict[str, Any]) -> None:
    """A Prefect worker ignores SIGTERM (../shared/NOTES.md)."""
    assert all(compose["services"][n].get("stop_signal") == "SIGINT" for n in WORKERS)


def test_gpu_worker_starts_gpu_containers(compose: dict[str, Any]) -> None:
    """The docker worker needs the Docker socket, runs only with the gpu profile, and its
    flow-run containers ask for the GPUs (deployments/prefect-docker.yaml)."""
    worker = compose["services"]["worker-gpu"]
    assert "/var/run/docker.sock:/var/run/docker.sock" in worker["volumes"]
    assert worker.get("group_add"), "UID 1000 needs the socket's group"
    assert worker.get("profiles") == ["gpu"]
    docker_yaml = yaml.safe_load((ROOT / "deployments" / "prefect-docker.yaml").read_text())
    for deployment in docker_yaml["deployments"]:
        requests = deployment["work_pool"]["job_variables"]["container_create_kwargs"]
        assert {"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]} in requests[
            "device_requests"
        ], deployment["name"]


def test_shared_volume_is_the_one_gpu_runs_mount(compose: dict[str, Any]) -> None:
    """CPU flow runs (inside worker-cpu) and GPU flow runs (containers of the docker worker)
    see the same volume at the same path, so their cache keys and result paths match."""
    name = compose["volumes"]["shared"]["name"]
    assert "shared:/shared" in compose["services"]["worker-cpu"]["volumes"]
    docker_yaml = yaml.safe_load((ROOT / "deployments" / "prefect-docker.yaml").read_text())
    for deployment in docker_yaml["deployments"]:
        assert f"{name}:/shared" in deployment["work_pool"]["job_variables"]["volumes"]


def test_images_are_built_from_dockerfiles_in_the_repo(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "build" in service:
            context = (DOCKER_DIR / service["build"]["context"]).resolve()
            assert context == ROOT, name
            assert (context / service["build"]["dockerfile"]).is_file(), name
