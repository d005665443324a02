"""Fixtures of the tests that need a Docker engine: a client, runs against the scripted model, and the
check that every test leaves no sandbox behind (found by this session's owner label)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from helpers import SESSION_OWNER, Result, airlock, airlock_env

from orchestrator.providers.scripted import ScriptedModelServer, Turn
from orchestrator.sandbox.spec import LABEL, OWNER_LABEL


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    return docker.from_env()


def session_sandboxes(client: docker.DockerClient) -> set[str]:
    """This session's sandboxes, running or not; other sessions sharing the engine are not ours to judge."""
    filters = {"label": [LABEL, f"{OWNER_LABEL}={SESSION_OWNER}"]}
    return {c.name for c in client.containers.list(all=True, filters=filters, ignore_removed=True)}


@pytest.fixture(autouse=True)
def no_container_left_behind(request: pytest.FixtureRequest, docker_client: docker.DockerClient) -> Iterator[None]:
    """Every test must leave no airlock sandbox behind: its runs have ended when it returns."""
    before = session_sandboxes(docker_client)
    yield
    leftover = session_sandboxes(docker_client) - before
    for name in leftover:  # clean up so one leak does not fail every later test, then fail this one
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.containers.get(name).remove(force=True)
    assert not leftover, f"{request.node.name} left sandbox containers behind: {sorted(leftover)}"


@pytest.fixture
def run_scripted(tmp_path: Path):
    """Run `airlock run REPO --task ... --out ...` against a scripted model; returns (Result, api).

    provider="openai": through the chat-completions adapter (`--provider openai --base-url ... --model scripted`)."""

    def run(
        repo: Path, turns: list[Turn], *extra: str, task: str = "Do the task.", provider: str = "anthropic", server: dict[str, Any] | None = None
    ) -> tuple[Result, ScriptedModelServer]:
        out = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}"
        with ScriptedModelServer(turns, **(server or {})) as api:
            access = ["--provider", "openai", "--base-url", api.openai_base_url, "--model", "scripted"] if provider == "openai" else []
            proc = airlock("run", str(repo), "--task", task, "--out", str(out), *access, *extra, env=airlock_env(api.base_url))
        return Result(proc.returncode, proc.stdout, proc.stderr, out), api

    return run
