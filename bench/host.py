"""Host side of a batch: memory and CPU per concurrently running task (the agent loop, not the sandbox).

TASKS tasks (BENCH_HOST_TASKS, default 16) run at once through `airlock batch --jobs TASKS` against the
scripted model, which thinks STEP_S seconds per step; every step is one cheap tool call. Every 0.2 s the
batch's processes are read from /proc: the batch, the launcher and the runs, never the sandboxes' own
processes (they belong to the engine, here or remote). Memory is PSS (a page shared by k processes counts
1/k in each), at the peak; CPU is user + system time, all of it divided by the tasks.

airlock forks each run from its launcher (orchestrator.batch.launcher); the baseline starts each run as a
fresh interpreter (AIRLOCK_BATCH_FORKSERVER=0), as airlock did before, measured in the same bench run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.demo import CALCULATOR_REPO
from orchestrator.providers.scripted import Scripted, ScriptedModelServer, reply, text, tool_use

TASKS = int(os.environ.get("BENCH_HOST_TASKS", "16"))
STEPS = 8
STEP_S = 1.0
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Usage:
    peak_pss_mb: float
    peak_rss_mb: float  # the largest single run's
    cpu_s: float
    wall_s: float
    completed: int


def descendants(root: int) -> list[int]:
    """`root` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack += children.get(pid, [])
    return found


def _sample(pid: int) -> tuple[float, float, float] | None:
    """PSS and RSS in MB, CPU seconds."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    kb = {line.split(":")[0]: int(line.split()[1]) for line in rollup.splitlines()[1:] if line.split()[1].isdigit()}
    return kb.get("Pss", 0) / 1024, kb.get("Rss", 0) / 1024, (int(fields[11]) + int(fields[12])) / TICK


def _turn(request: dict[str, Any]) -> Scripted:
    time.sleep(STEP_S)  # the model thinking: what keeps many tasks running at once
    step = sum(message["role"] == "assistant" for message in request["messages"])
    return reply(tool_use("run_bash", command=f"echo step {step}")) if step < STEPS else reply(text("done"))


def measure(forkserver: bool) -> Usage:
    with tempfile.TemporaryDirectory(prefix="airlock-bench-host-") as tmp:
        root = Path(tmp)
        entries = []
        for i in range(TASKS):
            shutil.copytree(CALCULATOR_REPO, root / f"r{i}", ignore=shutil.ignore_patterns("__pycache__"))
            entries.append(json.dumps({"id": f"t{i}", "repo": f"r{i}", "task": f"Look around. [t{i}]"}))
        (root / "tasks.jsonl").write_text("\n".join(entries) + "\n")
        with ScriptedModelServer({f"[t{i}]": [_turn] * (STEPS + 1) for i in range(TASKS)}) as api:
            env = {**os.environ, "ANTHROPIC_API_KEY": "bench", "ANTHROPIC_BASE_URL": api.base_url, "AIRLOCK_BATCH_FORKSERVER": "1" if forkserver else "0"}
            started = time.monotonic()
            cmd = [sys.executable, "-m", "orchestrator", "batch", str(root / "tasks.jsonl"), "--out", str(root / "out"), "--jobs", str(TASKS)]
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            cpu: dict[int, float] = {}
            peak_pss = peak_rss = 0.0
            done = threading.Event()
            threading.Thread(target=lambda: (proc.wait(), done.set()), daemon=True).start()
            while not done.wait(0.2):
                samples = {pid: s for pid in descendants(proc.pid) if (s := _sample(pid)) is not None}
                for pid, (_, _, seconds) in samples.items():
                    cpu[pid] = max(cpu.get(pid, 0.0), seconds)
                peak_pss = max(peak_pss, sum(pss for pss, _, _ in samples.values()))
                peak_rss = max([peak_rss, *(rss for pid, (_, rss, _) in samples.items() if pid != proc.pid)])
            wall = time.monotonic() - started
        summary = json.loads((root / "out" / "summary.json").read_text())
    return Usage(peak_pss, peak_rss, sum(cpu.values()), wall, summary["totals"]["completed"])


def report(name: str, usage: Usage) -> None:
    print(
        f"  {name:<40} {usage.peak_pss_mb / TASKS:8.1f} MB   {usage.peak_rss_mb:6.1f} MB   {usage.cpu_s / TASKS:6.2f} s   "
        f"{usage.wall_s:6.1f} s   {usage.completed}/{TASKS}"
    )


def main() -> None:
    print(f"host side of a batch: {TASKS} tasks at once, {STEPS} steps each, the model thinking {STEP_S:g} s a step")
    print(f"  {'':<40} {'memory/task':>11}   {'run RSS':>9}   {'CPU/task':>8}   {'wall':>8}   done")
    airlock, baseline = measure(forkserver=True), measure(forkserver=False)
    report("airlock: runs forked from the launcher", airlock)
    report("baseline: a fresh interpreter per run", baseline)
    per_task, base_task = airlock.peak_pss_mb / TASKS, baseline.peak_pss_mb / TASKS
    print(
        f"  per task: {base_task / max(per_task, 0.1):.1f}x less memory, {baseline.cpu_s / max(airlock.cpu_s, 0.01):.1f}x less CPU; "
        f"64 tasks at once would hold about {per_task * 64 / 1024:.1f} GB here ({base_task * 64 / 1024:.1f} GB as the baseline)\n"
    )


if __name__ == "__main__":
    main()
