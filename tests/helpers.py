"""Helpers shared by every test: the real CLI in a subprocess, its results, and tree snapshots."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    """Invoke the real CLI as a user would (`python -m orchestrator ...`)."""
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, env=env or airlock_env(), timeout=timeout, cwd=PROJECT)


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
