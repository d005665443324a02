"""Shared fixtures: real Docker, the real CLI in a subprocess, and the scripted Messages API server."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from orchestrator.demo import CALCULATOR_REPO
from orchestrator.sandbox import LABEL, owner_alive
from orchestrator.scripted_model import ScriptedModelServer, Turn

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    return docker.from_env()


def _orphaned_sandboxes(client: docker.DockerClient) -> list[str]:
    """Sandboxes whose airlock process is gone (a running airlock elsewhere on the machine is not a leak)."""
    listed = client.containers.list(all=True, filters={"label": LABEL}, ignore_removed=True)
    return [c.name for c in listed if not owner_alive(c.labels)]


@pytest.fixture(autouse=True)
def no_container_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test must leave no airlock sandbox behind (found by label)."""
    client = docker.from_env()
    before = set(_orphaned_sandboxes(client))
    yield
    leftover = set(_orphaned_sandboxes(client)) - before
    for name in leftover:  # clean up so one leak does not fail every later test, then fail this one
        with contextlib.suppress(docker.errors.NotFound):
            client.containers.get(name).remove(force=True)
    assert not leftover, f"{request.node.name} left sandbox containers behind: {sorted(leftover)}"


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str
    out: Path

    @property
    def record(self) -> dict[str, Any]:
        return json.loads((self.out / "run.json").read_text())

    @property
    def patch(self) -> bytes:
        return (self.out / "patch.diff").read_bytes()

    def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        lines = (self.out / "trajectory.jsonl").read_text().splitlines()
        events = [json.loads(line) for line in lines]
        return [e for e in events if type_ is None or e["type"] == type_]


def airlock_env(base_url: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_"))}
    env.update(ANTHROPIC_API_KEY="test-key-not-secret", OPENAI_API_KEY="test-openai-key-not-secret", COLUMNS="200", **extra)
    if base_url:
        env["ANTHROPIC_BASE_URL"] = base_url
    return env


def airlock(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Invoke the real CLI as a user would (`python -m orchestrator ...`)."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, env=env or airlock_env(), timeout=timeout, cwd=PROJECT
    )


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


@pytest.fixture
def calculator_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "calculator"
    shutil.copytree(CALCULATOR_REPO, repo, ignore=shutil.ignore_patterns("__pycache__"))
    return repo


def tree_snapshot(root: Path) -> dict[str, tuple[str, int | None, bytes]]:
    """Every file, folder and symlink below root (outside .git): kind, exec bit, content or link target."""
    snapshot: dict[str, tuple[str, int | None, bytes]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel == ".git" or rel.startswith(".git/") or "__pycache__" in rel:
            continue
        if path.is_symlink():
            snapshot[rel] = ("link", None, os.readlink(path).encode())
        elif path.is_dir():
            snapshot[rel] = ("dir", None, b"")
        else:
            snapshot[rel] = ("file", path.stat().st_mode & 0o100, path.read_bytes())
    return snapshot
