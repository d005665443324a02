"""The end of a batch: results/summary.json, results/predictions.jsonl and the table on the terminal.

Every task of the tasks file has a row, whether it ran now, finished in an earlier invocation (its
recorded values), or never started (with the reason). Costs that cannot be known stay null, never 0.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from orchestrator.batch.job import Job
from orchestrator.batch.progress import duration, money
from orchestrator.terminal import safe

TOKEN_KEYS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
STATUS_STYLE = {"completed": "green", "interrupted": "yellow", "not_started": "dim", "stuck": "yellow", "max_steps": "yellow"}


def task_row(job: Job) -> dict[str, Any]:
    record = job.record or {}
    usage = record.get("usage") or {key: getattr(job.usage, key) for key in TOKEN_KEYS}
    verify = record.get("verify") or {}
    ran = job.state not in ("not_started", "queued")
    return {
        "id": job.id,
        "status": job.status,
        "succeeded": job.succeeded,  # with a verify command, its verdict (see orchestrator.run.record.succeeded)
        "skipped": job.state == "skipped",  # finished in an earlier invocation; values as recorded then
        "repo": job.task.repo,
        "ref": job.task.ref,
        "model": record.get("model", job.task.model),
        "verify_passed": verify.get("passed") if verify and not verify.get("skipped") else None,
        "steps": record.get("steps", job.step),
        "tokens": {key: int(usage.get(key) or 0) for key in TOKEN_KEYS},
        "cost_usd": job.cost if ran else 0.0,
        "duration_s": record.get("duration_s", round(job.elapsed(), 2)),
        "files_changed": (record.get("patch") or {}).get("files_changed", 0),
        "error": job.error,
        "engine": job.engine.location if job.engine is not None and ran else None,  # None: the default one
        "out": str(job.out) if ran else None,
    }


def totals(rows: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    costs = [row["cost_usd"] for row in rows]
    return {
        "tasks": len(rows),
        "succeeded": sum(row["succeeded"] for row in rows),  # what the exit code counts: with --verify, its verdict
        "completed": sum(row["status"] == "completed" for row in rows),
        "not_completed": sum(row["status"] != "completed" for row in rows),
        "skipped": sum(row["skipped"] for row in rows),
        "by_status": dict(Counter(row["status"] for row in rows)),
        "steps": sum(row["steps"] for row in rows),
        "tokens": {key: sum(row["tokens"][key] for row in rows) for key in TOKEN_KEYS},
        "cost_usd": round(sum(cost for cost in costs if cost is not None), 6),
        "tasks_with_unknown_cost": sum(cost is None for cost in costs),  # cost_usd leaves them out
        "files_changed": sum(row["files_changed"] for row in rows),
        "duration_s": round(wall_s, 2),  # this invocation's wall clock
    }


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_predictions(path: Path, jobs: Iterable[Job]) -> int:
    """SWE-bench predictions: one line per task that has a finished run, with its patch.diff as text."""
    lines = []
    for job in jobs:
        if job.record is None:
            continue
        try:  # patches are text diffs (binary content is base85); undecodable bytes become U+FFFD
            patch = (job.out / "patch.diff").read_bytes().decode("utf-8", errors="replace")
        except OSError:
            patch = ""
        prediction = {"instance_id": job.id, "model_name_or_path": job.record.get("model", job.task.model), "model_patch": patch}
        lines.append(json.dumps(prediction, ensure_ascii=False) + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, path)
    return len(lines)


def _verify(row: dict[str, Any]) -> str:
    return "–" if row["verify_passed"] is None else ("passed" if row["verify_passed"] else "failed")


def print_table(console: Console, rows: list[dict[str, Any]], sums: dict[str, Any]) -> None:
    table = Table(title="airlock batch", title_justify="left", header_style="bold")
    for column in ("task", "status", "verify", "steps", "tokens", "cost", "time", "files"):
        # Folded, never cut: a narrow COLUMNS may wrap a value, but every value is there in full.
        table.add_column(column, justify="left" if column in ("task", "status", "verify") else "right", overflow="fold")
    for row in rows:
        status = row["status"] + (" (earlier)" if row["skipped"] else "")
        style = "green" if row["succeeded"] else STATUS_STYLE.get(row["status"], "red")
        table.add_row(
            safe(row["id"]), safe(status, style), _verify(row), str(row["steps"]),
            f"{sum(row['tokens'].values()):,}", money(row["cost_usd"]), duration(row["duration_s"]), str(row["files_changed"]),
        )  # fmt: skip
    table.add_section()
    table.add_row(
        "total", f"{sums['succeeded']}/{sums['tasks']} succeeded", "", str(sums["steps"]), f"{sum(sums['tokens'].values()):,}",
        money(sums["cost_usd"], sums["tasks_with_unknown_cost"] > 0), duration(sums["duration_s"]), str(sums["files_changed"]),
    )  # fmt: skip
    console.print(table)
    tokens = sums["tokens"]
    console.print(
        f"tokens: in {tokens['input_tokens']:,} · cache read {tokens['cache_read_input_tokens']:,} · "
        f"cache write {tokens['cache_creation_input_tokens']:,} · out {tokens['output_tokens']:,}",
        highlight=False,
    )
    for row in rows:
        if row["error"] and not row["succeeded"]:
            console.print(safe(row["id"], "red"), safe(row["error"]), sep=": ", highlight=False)
