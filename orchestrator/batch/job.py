"""One task of a batch: its child `airlock run` process, and what the batch learns from its files.

A task runs as a real `airlock run` in its own process, so a task that crashes, hangs or is killed
cannot take the others (or the scheduler) down with it. Everything the scheduler knows about a
running task it reads from the files the run writes anyway: trajectory.jsonl for the current step
and the tokens so far, run.json for the final outcome.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from orchestrator.batch.follow import TrajectoryTail, UsageFields
from orchestrator.batch.launcher import RunProcess, launch
from orchestrator.batch.placement import ENGINE_LOST, Engine
from orchestrator.batch.tasks import BatchTask
from orchestrator.conversation import Usage
from orchestrator.policy.guard import request_stop
from orchestrator.policy.pricing import cost_usd
from orchestrator.run.record import succeeded
from orchestrator.sizes import human_size

State = Literal["queued", "cloning", "running", "done", "skipped", "not_started"]
# A run.json with one of these did not finish its work: a resumed batch runs the task again.
UNFINISHED = ("running", "interrupted")
LOG_NAME = "airlock.log"
ATTEMPTS_DIR = "attempts"  # a run of several attempts keeps each in OUT/attempts/N
POLICY_NAME = "policy.toml"
DEFINITION_NAME = "batch-task.json"  # what the task was when it ran, to tell on resume whether it changed


def read_record(out: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((out / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def move_aside(out: Path) -> Path:
    """Keep an earlier, unfinished (or --redo) run of a task, rather than delete its partial work."""
    previous = out.parent / ".previous"
    previous.mkdir(exist_ok=True)
    n = 1
    while (previous / f"{out.name}-{n}").exists():
        n += 1
    target = previous / f"{out.name}-{n}"
    shutil.move(str(out), target)
    return target


@dataclass
class Job:
    task: BatchTask
    out: Path
    state: State = "queued"
    proc: RunProcess | None = None
    clone: Future[Path] | None = None
    started: float | None = None  # time.monotonic()
    ended: float | None = None
    step: int = 0
    activity: str = ""  # what the step is doing, for the live display
    usage: Usage = field(default_factory=Usage)
    record: dict[str, Any] | None = None  # the final run.json
    status: str | None = None  # the final status, as in run.json, or a batch one: not_started, clone_failed, crashed
    error: str | None = None
    moved_to: Path | None = None
    resume_earlier: bool = False  # its unfinished earlier run is to go on from its recorded steps (`airlock resume`)
    resumed: bool = False  # and it did
    engine: Engine | None = None  # where it runs; taken when it starts (or starts cloning)
    slots: int = 1  # of its engine's: a task of several attempts runs this many of them at once
    _tails: dict[Path, TrajectoryTail] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.task.id

    @property
    def succeeded(self) -> bool:
        """The run's own rule (orchestrator.run.record.succeeded): with a verify command, its verdict decides."""
        return self.record is not None and succeeded(self.status, self.record.get("verify"))

    @property
    def cost(self) -> float | None:
        if self.record is not None and self.state in ("done", "skipped"):
            return self.record.get("cost_usd")
        return cost_usd(self.usage, self.task.price)

    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.ended or time.monotonic()) - self.started

    def start(self, repo: Path, coordination: Path, rate_limit_file: Path, *, resume: bool = False) -> None:
        """Start `airlock run` for this task, its output to OUT/airlock.log, in the batch's process group;
        with `resume`, `airlock resume` of its unfinished earlier run, in the same folder.

        The same process group, so a Ctrl-C at the terminal reaches every run at once, as it would a pipeline."""
        where = self.engine
        coordinated = ["--stop-file", str(self.stop_file(coordination)), "--rate-limit-file", str(rate_limit_file)]
        env = {**os.environ, "COLUMNS": os.environ.get("COLUMNS", "160"), **(where.env() if where else {})}
        if resume:
            (self.out / ENGINE_LOST).unlink(missing_ok=True)  # it runs again now: no longer lost
            self.proc = launch(["resume", str(self.out), "--repo", str(repo), *self.task.resume_options(), *coordinated], env, self.out / LOG_NAME)
            self.state, self.started, self.resumed = "running", time.monotonic(), True
            return
        if self.out.exists():
            self.moved_to = move_aside(self.out)
        self.out.mkdir(parents=True)
        (self.out / DEFINITION_NAME).write_text(json.dumps(self.task.definition(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        task_file = coordination / f"{self.id}.task"
        task_file.write_text(self.task.task, encoding="utf-8")
        policy_file = self.out / POLICY_NAME  # kept with the run: the policy it ran under, and what it was made of
        policy_file.write_text(self.task.policy.to_toml(), encoding="utf-8")
        args = [
            "run", str(repo), "--task-file", str(task_file), "--out", str(self.out), *self.task.run_options(policy_file, self.slots),
            *(where.run_options() if where else []), *coordinated,
        ]  # fmt: skip
        self.proc = launch(args, env, self.out / LOG_NAME)
        self.state, self.started = "running", time.monotonic()

    def changed_since_run(self) -> list[str]:
        """What of the task's definition differs from when its earlier run started (nothing known: nothing)."""
        try:
            earlier = json.loads((self.out / DEFINITION_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        now = json.loads(json.dumps(self.task.definition()))  # as JSON has it, tuples as lists
        return [key for key in now if not isinstance(earlier, dict) or earlier.get(key) != now[key]]

    def stop_file(self, coordination: Path) -> Path:
        return coordination / f"{self.id}.stop"

    def request_stop(self, coordination: Path, reason: str) -> None:
        """Ask the run to stop after its current step (it checks between steps)."""
        request_stop(self.stop_file(coordination), reason)

    def interrupt(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def read_progress(self) -> list[int]:
        """Take in the trajectory lines written since the last call (of each attempt, for a task of several);
        returns the steps that began."""
        began = []
        for event in [event for tail in self._trajectories() for event in tail.new_events()]:
            kind = event.get("type")
            if kind == "model_request":
                step, self.activity = event.get("step", self.step), "waiting for the model"
                if step > self.step or self.task.attempts == 1:  # of several attempts: the furthest one's
                    self.step = step
                    began.append(step)
            elif kind == "model_response":
                self.usage.add(UsageFields(event.get("usage") or {}))
                names = [p.get("name", "?") for p in (event.get("message") or {}).get("content", []) if p.get("type") == "tool_call"]
                self.activity = ", ".join(names) if names else "answering"
            elif kind == "copy_progress":  # a big repo still streaming into its sandbox
                self.activity = f"copying the repo in: {human_size(event.get('bytes', 0))} of {human_size(event.get('total_bytes', 0))}"
            elif kind == "run_end":
                self.activity = "finishing"
        return began

    def _trajectories(self) -> list[TrajectoryTail]:
        """Where its steps are recorded: its run's trajectory, or each attempt's (the run's own is only the
        chosen one's copy, at the end)."""
        if self.task.attempts == 1:
            paths = [self.out / "trajectory.jsonl"]
        else:
            paths = sorted((self.out / ATTEMPTS_DIR).glob("*/trajectory.jsonl"))
        for path in paths:
            self._tails.setdefault(path, TrajectoryTail(path))
        return [self._tails[path] for path in paths]

    def finish(self, *, interrupted: bool) -> None:
        """The process has exited: take its outcome from run.json, or say why there is none."""
        self.read_progress()
        self.state, self.ended = "done", time.monotonic()
        record = read_record(self.out)
        code = self.proc.returncode if self.proc is not None else None
        if record is not None and record.get("status") != "running":  # a record still "running" says nothing final
            self.record = record
            self.status, self.error = record["status"], record.get("error")
        elif interrupted:
            self.status = "interrupted"
            self.error = "interrupted before the run could record it" + (f" (exit {code})" if code else "")
        else:
            self.status = "crashed"
            self.error = f"the run exited with status {code} without a final run.json: {_last_line(self.out / LOG_NAME)}"

    def not_started(self, reason: str, status: str = "not_started") -> None:
        self.state, self.status, self.error = "not_started", status, reason


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:300] if lines else "(empty log)"
