"""The sandbox image, against the real Docker daemon (the suite's setup builds it: `make image`)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import docker
import pytest
from helpers import SESSION_OWNER

from orchestrator.sandbox.docker_client import docker_client
from orchestrator.sandbox.image import (
    DEFAULT_IMAGE,
    LABEL_BASE_MODE,
    LABEL_DIGEST,
    BaseMode,
    build_digest,
    build_image,
    image_info,
)
from orchestrator.sandbox.spec import OWNER_LABEL

TEST_LABELS = {"airlock.test": "1"}
# What an image may carry in ENV: the search path and, at most, locale basics. Nothing host-specific.
ALLOWED_ENV = {"PATH", "LANG", "LC_ALL"}


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    c = docker_client()
    info = image_info(c, DEFAULT_IMAGE, probe=False)
    if not (info.present and info.up_to_date):
        pytest.fail(f"{DEFAULT_IMAGE} is missing or stale: run `make image` (airlock image build) first")
    yield c
    c.close()


def run_in_image(client: docker.DockerClient, script: str) -> str:
    """Run `script` in a throwaway, network-less container of the default image; returns stdout."""
    container = client.containers.create(DEFAULT_IMAGE, ["sh", "-c", script], network_mode="none", labels=TEST_LABELS)
    try:
        container.start()
        status = container.wait(timeout=60)
        out = container.logs(stdout=True, stderr=True).decode()
        assert status["StatusCode"] == 0, out
        return out
    finally:
        container.remove(force=True)


def test_build_is_a_fast_noop_when_up_to_date(client: docker.DockerClient) -> None:
    lines: list[str] = []
    started = time.monotonic()
    result = build_image(DEFAULT_IMAGE, log=lines.append, client=client)
    elapsed = time.monotonic() - started

    assert result.built is False
    assert elapsed < 5, f"an up-to-date image took {elapsed:.1f} s"
    assert any("up to date" in line for line in lines)
    assert result.image_id == client.images.get(DEFAULT_IMAGE).id


def test_image_config_is_non_root_and_minimal(client: docker.DockerClient) -> None:
    config = client.api.inspect_image(DEFAULT_IMAGE)["Config"]

    assert config["User"] == "1000:1000"
    assert config["WorkingDir"] == "/workspace"
    env_names = {entry.split("=", 1)[0] for entry in config.get("Env") or []}
    assert env_names <= ALLOWED_ENV, f"unexpected ENV: {sorted(env_names - ALLOWED_ENV)}"
    labels = config["Labels"]
    assert labels["airlock.image"] == "1"
    assert labels["org.opencontainers.image.title"] == "airlock-sandbox"
    assert labels[LABEL_DIGEST] == build_digest(BaseMode(labels[LABEL_BASE_MODE]))


def test_container_has_tools_and_runs_as_airlock(client: docker.DockerClient) -> None:
    out = run_in_image(
        client,
        "id -u; id -g; echo home=$HOME; pwd; stat -c %u /workspace; ls /sys/class/net; "
        "python3 --version; python --version; git --version; rg --version; python3 -m pytest --version; make --version; "
        "node --version; npm --version; python3 -m venv /tmp/venv && /tmp/venv/bin/python -m pip --version",
    )
    lines = out.splitlines()

    assert lines[:5] == ["1000", "1000", "home=/home/airlock", "/workspace", "1000"]
    assert "eth0" not in lines, "network none must leave only the loopback interface"
    assert "Python 3." in out
    assert "git version" in out
    assert "ripgrep" in out
    assert "pytest" in out
    assert "GNU Make" in out and "\nv18." in out  # Debian bookworm's Node.js
    assert "pip " in out and "/tmp/venv/" in out  # a project's own virtualenv can be made


def test_image_info_probes_the_tools(client: docker.DockerClient) -> None:
    def probes() -> set[str]:  # ours only: other sessions share the engine and come and go
        return {c.id for c in client.containers.list(all=True, filters={"label": ["airlock.probe", f"{OWNER_LABEL}={SESSION_OWNER}"]})}

    before = probes()
    info = image_info(client, DEFAULT_IMAGE)

    assert info.present and info.up_to_date
    assert info.tools == dict.fromkeys(["python3", "python", "git", "rg", "make", "node", "npm", "pytest"], True)
    assert info.probe_error is None
    assert not probes() - before, "the probe left a container behind"


def test_image_info_reports_a_missing_image(client: docker.DockerClient) -> None:
    info = image_info(client, "airlock-sandbox:does-not-exist")

    assert not info.present and not info.up_to_date and info.tools == {}


def test_digest_depends_on_the_base_mode() -> None:
    assert build_digest(BaseMode.REGISTRY) != build_digest(BaseMode.DEBIAN_PACKAGES)
    assert build_digest(BaseMode.REGISTRY, packages=("python3",)) != build_digest(BaseMode.REGISTRY)
    with pytest.raises(ValueError):
        build_digest(BaseMode.AUTO)
