"""Helpers shared by every test: the real CLI in a subprocess, its results, and tree snapshots."""

from __future__ import annotations

import json
import multiprocessing
import os
import secrets
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.batch.launcher import become_cli

PROJECT = Path(__file__).resolve().parent.parent
# Every sandbox this test session makes carries this owner label, so the leak check sees only its own,
# even when other sessions share the engine.
SESSION_OWNER = f"pytest-{os.getpid()}-{secrets.token_hex(3)}"


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
    """Invoke the real CLI (`airlock ARGS`, its entry point `orchestrator.cli:main`) in a process of its own.

    The process is forked from a server that imported airlock and the model SDKs once (orchestrator/batch/preload.py), as
    `airlock batch` starts its runs (orchestrator.batch.launcher): importing the SDKs is most of a small run's
    CPU, and the suite is CPU-bound."""
    env = env or airlock_env()
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["orchestrator.batch.preload"])
    with tempfile.TemporaryDirectory(prefix="airlock-cli-") as streams:
        stdout, stderr = Path(streams, "stdout"), Path(streams, "stderr")
        process = context.Process(target=become_cli, args=(list(args), env, str(stdout), str(stderr), str(PROJECT)), name="airlock")
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(["airlock", *args], timeout)
        read = lambda path: path.read_text(errors="replace") if path.exists() else ""  # noqa: E731
        return subprocess.CompletedProcess(["airlock", *args], process.exitcode, read(stdout), read(stderr))


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
