"""`airlock env`: the environment images setup phases built, listed, removed by key, pruned by last use."""

from __future__ import annotations

import json
import re
import time

from rich.console import Console
from rich.table import Table

from orchestrator.errors import UsageError
from orchestrator.run.setup import last_used
from orchestrator.sandbox.base import Environment, EnvironmentStore

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """'30d', '12h', '90m', '2w' or seconds, in seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    if not match:
        raise UsageError(f"--older-than must be a duration like 30d, 12h or 90m, not {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def _ago(when: float | None, now: float) -> str:
    if not when:
        return "never"
    seconds = max(0.0, now - when)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _used(env: Environment) -> float:
    return last_used(env.key) or env.created


def render_environments(store: EnvironmentStore, console: Console) -> None:
    envs = store.all()
    if not envs:
        console.print("no environments yet: `airlock run --setup auto ...` builds one")
        return
    now = time.time()
    table = Table(box=None, header_style="bold")
    widest_repo = max(len(env.labels.get("airlock.env.repo", "")) for env in envs)
    for column in ("key", "repo", "size", "age", "last used", "commands"):
        # A repo's path stays on one line (something to copy, or grep in a log); the commands fold instead.
        repo = column == "repo"
        table.add_column(column, overflow="fold", no_wrap=repo, min_width=widest_repo if repo else None)
    for env in envs:
        try:
            commands = "; ".join(json.loads(env.labels.get("airlock.env.commands", "[]"))[1:])
        except ValueError:
            commands = ""
        table.add_row(
            env.key[:16],
            env.labels.get("airlock.env.repo", ""),
            f"{env.size / 1024**2:.1f} MiB",
            _ago(env.created, now),
            _ago(last_used(env.key), now),
            commands,
        )
    console.print(table)
    console.print(f"{len(envs)} environment(s), {sum(env.size for env in envs) / 1024**2:.1f} MiB")


def remove_environments(store: EnvironmentStore, keys: list[str]) -> list[str]:
    """Remove by key or unique key prefix; every key is checked before anything is removed."""
    envs = store.all()
    chosen = []
    for key in keys:
        matches = [env for env in envs if env.key.startswith(key.lower())]
        if not matches:
            raise UsageError(f"no environment has a key starting with {key!r} (see `airlock env ls`)")
        if len(matches) > 1:
            raise UsageError(f"{key!r} matches {len(matches)} environments: give more of the key")
        chosen.append(matches[0])
    for env in chosen:
        store.remove(env)
    return [env.image for env in chosen]


def prune_environments(store: EnvironmentStore, older_than: float) -> list[str]:
    """Remove every environment not used (or, never used, not built) within `older_than` seconds."""
    cutoff = time.time() - older_than
    stale = [env for env in store.all() if _used(env) < cutoff]
    for env in stale:
        store.remove(env)
    return [env.image for env in stale]
