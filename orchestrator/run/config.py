"""A run's settings, checked up front so bad input fails with one clear line before anything starts."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import UsageError
from orchestrator.policy.model import Policy
from orchestrator.run.record import AttemptOf


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


@dataclass(frozen=True)
class RunConfig:
    repo: Path
    task: str
    out: Path
    run_id: str
    model: str
    policy: Policy  # the effective policy: the file's, with command-line flags applied
    verify: str | None = None
    stop_file: Path | None = None  # set by `airlock batch`: stop between steps once this file exists
    backend: str = "docker"  # the sandbox backend, by name (orchestrator.sandbox.backends)
    rebuild_env: bool = False  # build the setup's environment even if one with its key exists
    setup_secrets: dict[str, str] = field(default_factory=dict, repr=False)  # name -> value, for the setup commands only
    location: str | None = None  # where it places boxes (a Kubernetes namespace); None: its default
    attempt: AttemptOf | None = None  # one attempt of several at this task (`airlock run --attempts`)


def check_repo(repo: Path) -> Path:
    if not repo.exists():
        raise UsageError(f"repo not found: {repo}")
    if not repo.is_dir():
        raise UsageError(f"repo must be a folder, not a file: {repo}")
    return repo.resolve()


def read_task(task: str | None, task_file: Path | None) -> str:
    if task is not None and task_file is not None:
        raise UsageError("give the task either with --task or with --task-file, not both")
    if task_file is not None:
        try:
            task = task_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the task file {task_file}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
    if task is None or not task.strip():
        raise UsageError("the task is empty: say what the agent should do with --task TEXT or --task-file FILE")
    return task.strip()


def check_out_dir(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out must be a folder, not a file: {out}")
    if (out / "run.json").exists():
        raise UsageError(f"{out} already holds a run; choose another --out folder")
    return out.resolve()
