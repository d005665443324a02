"""A recorded run's folder as `replay`, `resume` and `fork` read it: run.json and the trajectory's events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.errors import UsageError
from orchestrator.run.trajectory import read_events


def read_run_folder(folder: Path, files: tuple[str, ...], keys: tuple[str, ...], purpose: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """run.json and the trajectory's events; UsageError (one line) for anything missing or unreadable.

    `files`: what the folder must hold besides run.json and trajectory.jsonl; `keys`: what run.json must
    name; `purpose`: what the reader does with it, for the messages ("replayed", "continued")."""
    if not folder.exists():
        raise UsageError(f"run folder not found: {folder}")
    if not folder.is_dir():
        raise UsageError(f"a run folder is needed, not a file: {folder}")
    for name in ("run.json", "trajectory.jsonl", *files):
        if not (folder / name).is_file():
            raise UsageError(f"{folder} is not a complete run folder: it has no {name}")
    try:
        run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        events = [event for event in read_events(folder / "trajectory.jsonl") if isinstance(event, dict)]
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"cannot read the run in {folder}: {exc}") from None
    missing = [key for key in (*keys, "policy") if not isinstance(run, dict) or key not in run]
    if missing:
        raise UsageError(f"{folder / 'run.json'} has no {', '.join(missing)}: it was not written by airlock run")
    if not isinstance(run["policy"], dict) or not run["policy"]:  # never under defaults it did not run with
        raise UsageError(f"{folder / 'run.json'} records no effective policy: it cannot be {purpose} under the rules it ran with")
    return run, events
