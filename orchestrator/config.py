"""A run's settings, checked up front so bad input fails with one clear line before anything starts."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.errors import UsageError

if TYPE_CHECKING:
    from orchestrator.policy import Policy

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str, what: str, *, minimum: int = 0) -> int:
    """'512m', '2g', '1.5GiB' or a byte count -> bytes (binary units, as Docker uses them)."""
    match = _SIZE.match(str(text))
    if not match:
        raise UsageError(f"{what} must be a size like 512m or 2g, not {text!r}")
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size < minimum:
        raise UsageError(f"{what} must be at least {minimum // 1024**2} MiB, not {text!r}")
    return size


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
