"""Fixtures of the tests that need a Docker engine: a client, runs against the scripted model, and the
check that every test leaves no sandbox behind (found by this session's owner label)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from helpers import SESSION_OWNER, Result, airlock, airlock_env
from package_index import PackageIndex, build_wheel

from orchestrator.providers.scripted import ScriptedModelServer, Turn
from orchestrator.sandbox.docker_build import BUILD_LABEL
from orchestrator.sandbox.docker_egress import NETWORK_LABEL
from orchestrator.sandbox.docker_environments import ENV_LABEL
from orchestrator.sandbox.docker_tool_runtime import DERIVED_LABEL
from orchestrator.sandbox.spec import LABEL, OWNER_LABEL


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    return docker.from_env()


def session_sandboxes(client: docker.DockerClient) -> set[str]:
    """This session's sandboxes, running or not; other sessions sharing the engine are not ours to judge."""
    filters = {"label": [LABEL, f"{OWNER_LABEL}={SESSION_OWNER}"]}
    return {c.name for c in client.containers.list(all=True, filters=filters, ignore_removed=True)}


def session_networks(client: docker.DockerClient) -> set[str]:
    """This session's setup networks (their runs' labels carry the owner)."""
    return {n.name or "" for n in client.networks.list(filters={"label": [NETWORK_LABEL, f"{OWNER_LABEL}={SESSION_OWNER}"]})}


def volumes_left_behind(client: docker.DockerClient, before: set[str]) -> set[str]:
    """New volumes that no container uses, and still none a moment later. Volumes carry no owner (an image's
    VOLUME makes an anonymous one unless a mount covers it), so another worker's build can be seen: its
    intermediate containers' volumes are in use, or gone once the container is removed with them."""

    def dangling() -> set[str]:
        return {volume.name for volume in client.volumes.list(filters={"dangling": True})} - before

    candidates = dangling()
    if candidates:
        time.sleep(2)
        candidates &= dangling()
    return candidates


@pytest.fixture(autouse=True)
def no_container_left_behind(request: pytest.FixtureRequest, docker_client: docker.DockerClient) -> Iterator[None]:
    """Every test must leave no airlock sandbox (nor egress proxy, setup network or volume) behind: its runs
    have ended when it returns."""
    before, networks_before = session_sandboxes(docker_client), session_networks(docker_client)
    volumes_before = {volume.name for volume in docker_client.volumes.list()}
    yield
    leftover = session_sandboxes(docker_client) - before
    for name in leftover:  # clean up so one leak does not fail every later test, then fail this one
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.containers.get(name).remove(force=True)
    left_networks = session_networks(docker_client) - networks_before
    for name in left_networks:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.networks.get(name).remove()
    left_volumes = volumes_left_behind(docker_client, volumes_before)
    for name in left_volumes:
        with contextlib.suppress(docker.errors.APIError):
            docker_client.volumes.get(name).remove(force=True)
    assert not leftover, f"{request.node.name} left sandbox containers behind: {sorted(leftover)}"
    assert not left_volumes, f"{request.node.name} left volumes behind: {sorted(left_volumes)}"
    assert not left_networks, f"{request.node.name} left setup networks behind: {sorted(left_networks)}"


@pytest.fixture(scope="session", autouse=True)
def no_environment_left_behind(docker_client: docker.DockerClient) -> Iterator[None]:
    """Environment images, project images and images with the tool runtime added are caches meant to outlive
    runs; this session's go when it ends (those made from others first)."""
    yield
    for label in (ENV_LABEL, DERIVED_LABEL, BUILD_LABEL):
        for image in docker_client.images.list(filters={"label": [label, f"{OWNER_LABEL}={SESSION_OWNER}"]}):
            with contextlib.suppress(docker.errors.APIError):
                docker_client.images.remove(image.id, force=True)


@pytest.fixture(params=["runc", "runsc"])
def runtime(request: pytest.FixtureRequest, docker_client: docker.DockerClient) -> str:
    """The isolation tests run under runc and under gVisor's runsc, which `make test`'s Docker set-up
    registers with the daemon (scripts/ensure-gvisor.sh); without it they are skipped, and fail in CI."""
    if request.param not in ("runc", *(docker_client.info().get("Runtimes") or {})):
        message = f"the container runtime {request.param!r} is not registered with the Docker daemon: run `make test` (scripts/ensure-gvisor.sh)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return str(request.param)


@pytest.fixture
def run_scripted(tmp_path: Path):
    """Run `airlock run REPO --task ... --out ...` against a scripted model; returns (Result, api).

    provider="openai": through the chat-completions adapter (`--provider openai --base-url ... --model scripted`)."""

    def run(
        repo: Path,
        turns: list[Turn],
        *extra: str,
        task: str = "Do the task.",
        provider: str = "anthropic",
        server: dict[str, Any] | None = None,
        env_extra: dict[str, str] | None = None,
    ) -> tuple[Result, ScriptedModelServer]:
        out = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}"
        with ScriptedModelServer(turns, **(server or {})) as api:
            access = ["--provider", "openai", "--base-url", api.openai_base_url, "--model", "scripted"] if provider == "openai" else []
            proc = airlock("run", str(repo), "--task", task, "--out", str(out), *access, *extra, env=airlock_env(api.base_url, **(env_extra or {})))
        return Result(proc.returncode, proc.stdout, proc.stderr, out), api

    return run


# The setup tests' hermetic package index, on the host's address on Docker's default bridge, reachable only through the egress proxy.


@pytest.fixture(scope="module")
def bridge_host() -> str:
    """The host's address on Docker's default bridge: where the egress proxy finds the test's index."""
    config = docker.from_env().networks.get("bridge").attrs["IPAM"]["Config"][0]
    return config.get("Gateway") or str(ipaddress.ip_network(config["Subnet"])[1])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheels"), "airlock-testdep", "1.0", "def answer():\n    return 42\n")


@pytest.fixture(scope="module")
def index(bridge_host: str, wheel: Path) -> Iterator[PackageIndex]:
    with PackageIndex(bridge_host, [wheel]) as served:
        yield served


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory, bridge_host: str) -> Path:
    path = tmp_path_factory.mktemp("policy") / "setup.toml"
    path.write_text(f'[setup]\nallow_hosts = ["{bridge_host}"]\ntimeout = 120\n')
    return path
