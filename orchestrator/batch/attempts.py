"""`airlock run --attempts K`: K independent attempts at one task, and the one chosen by a verdict the
agent cannot forge.

Each attempt is a real `airlock run` with the same options, in its own process and sandbox (started as a
batch starts its tasks), its output in OUT/attempts/N. They differ in their temperature and in the attempt
number in their first message; the system prompt and tools, where the prompt cache's prefix ends, are the
same, so the attempts share it. The choice:

- with --verify: the attempts whose fresh-sandbox verify passed; among them the smallest patch (changed
  lines), then the fewest steps, then the lowest number;
- without: `--pick smallest` (of the completed attempts with a patch), `first` (the first to complete, by
  number) or `none` (every attempt kept, none chosen).

The budget (the policy's max_cost_usd and max_input_tokens) covers all attempts together: once it is spent
no attempt starts, and running ones stop after their current step (through their stop files, as in a
batch). `--stop-at-first-pass` interrupts the others once one attempt's verify passed. OUT/patch.diff,
run.json and trajectory.jsonl are the chosen attempt's, and run.json lists every attempt and why the
chosen one won.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

from orchestrator.batch.follow import TrajectoryTail, UsageFields
from orchestrator.batch.interrupts import counted_interrupts
from orchestrator.batch.job import ATTEMPTS_DIR, LOG_NAME, read_record
from orchestrator.batch.launcher import RunProcess, launch
from orchestrator.conversation import Usage
from orchestrator.policy.guard import PolicyGuard, read_stop_request, request_stop
from orchestrator.run.record import AGENT_STOPS, AttemptsRecord, AttemptSummary, PatchRecord, RunRecord
from orchestrator.sizes import plural
from orchestrator.terminal import safe

PICKS = ("smallest", "first", "none")
POLL_S = 0.3
INTERRUPT_GRACE_S = 30.0  # an interrupted run saves its patch and removes its sandbox within seconds


def temperatures(count: int, sampled: bool = True) -> list[float | None]:
    """One temperature per attempt: one attempt keeps the API's default, and so does an API that takes none
    (`sampled` False); several spread from 1.0 down to 0.5."""
    if count == 1 or not sampled:
        return [None] * count
    return [round(1.0 - 0.5 * n / (count - 1), 2) for n in range(count)]


@dataclass
class Attempt:
    number: int
    out: Path
    temperature: float | None
    state: Literal["queued", "running", "done", "not_started"] = "queued"
    proc: RunProcess | None = None
    record: dict[str, Any] | None = None
    stopped: str | None = None  # why airlock stopped it, or never started it
    usage: Usage = field(default_factory=Usage)
    _tail: TrajectoryTail | None = None

    def follow(self) -> None:
        """Add the usage of the replies it recorded since the last look."""
        if self._tail is None:
            self._tail = TrajectoryTail(self.out / "trajectory.jsonl")
        for event in self._tail.new_events():
            if event.get("type") == "model_response":
                self.usage.add(UsageFields(event.get("usage") or {}))

    def summary(self) -> AttemptSummary:
        record = self.record or {}
        verify, patch = record.get("verify"), record.get("patch") or {}
        passed = None if not isinstance(verify, dict) or verify.get("skipped") else verify.get("passed") is True
        return AttemptSummary(
            number=self.number, folder=f"{ATTEMPTS_DIR}/{self.number}", status=record.get("status", "not_started" if self.state == "not_started" else "crashed"),
            verify=passed, changed_lines=patch.get("insertions", 0) + patch.get("deletions", 0), steps=record.get("steps", 0),
            cost_usd=record.get("cost_usd"), temperature=self.temperature, stopped=self.stopped, error=record.get("error"),
        )  # fmt: skip


def choose(attempts: list[AttemptSummary], rule: str) -> tuple[int | None, str]:
    """The chosen attempt's number (None: none qualified) and why, by `rule`: verify, smallest, first or none."""
    if rule == "none":
        return None, "--pick none: every attempt is kept and none is chosen"
    if rule == "verify":
        candidates = [a for a in attempts if a.verify is True and a.status in AGENT_STOPS]
        if not candidates:
            return None, "no attempt's verify passed"
        best = min(candidates, key=lambda a: (a.changed_lines, a.steps, a.number))
        if len(candidates) == 1:
            return best.number, "the only attempt whose verify passed"
        return best.number, f"verify passed for {len(candidates)} attempts; {_smallest(best, candidates)}"
    completed = [a for a in attempts if a.status == "completed"]
    if rule == "first":
        if not completed:
            return None, "no attempt completed"
        return completed[0].number, "--pick first: the first attempt (by number) that completed"
    candidates = [a for a in completed if a.changed_lines > 0]
    if not candidates:
        return None, "no attempt completed with a patch"
    best = min(candidates, key=lambda a: (a.changed_lines, a.steps, a.number))
    return best.number, f"--pick smallest: {_smallest(best, candidates)}"


def _smallest(best: AttemptSummary, candidates: list[AttemptSummary]) -> str:
    ties = [a for a in candidates if a.changed_lines == best.changed_lines]
    if len(ties) == 1:
        return f"the smallest patch ({plural(best.changed_lines, 'changed line')})"
    steps = [a for a in ties if a.steps == best.steps]
    tie = f"then the fewest steps ({best.steps})" + (", then the lowest number" if len(steps) > 1 else "")
    return f"the smallest patch ({plural(best.changed_lines, 'changed line')}), {tie}"


@dataclass(frozen=True)
class Coordinated:
    """What a batch gives the run of a task of several attempts: its stop file (the attempts stop with it)
    and the rate-limit file its tasks share (so do the attempts)."""

    stop_file: Path | None = None
    rate_limit_file: Path | None = None


class Attempts:
    def __init__(
        self, args: list[str], out: Path, count: int, jobs: int, rule: str, stop_at_first_pass: bool, guard: PolicyGuard, console: Console, sampled: bool,
        batch: Coordinated = Coordinated(),
    ) -> None:  # fmt: skip
        """`args`: the `airlock run` command line (after `airlock`) every attempt runs, given its own --out and attempt number;
        `sampled`: the API takes a temperature."""
        self.args, self.out, self.jobs, self.rule, self.batch = args, out, jobs, rule, batch
        self.provisional: RunRecord | None = None  # run.json until the choice: the run, its attempts so far
        self.stop_at_first_pass, self.guard, self.console = stop_at_first_pass, guard, console
        self.attempts = [Attempt(n + 1, out / ATTEMPTS_DIR / str(n + 1), t) for n, t in enumerate(temperatures(count, sampled))]
        self.interrupts = 0
        self.stopping: str | None = None  # why no further attempt starts
        self.coordination: Path

    def run(self, provisional: RunRecord | None = None) -> int:
        """`provisional`: the run as described before any attempt ran; saved as run.json (status running, the
        attempts so far) until the choice replaces it, so even a killed run leaves a record of its attempts."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.provisional = provisional
        self._save_provisional()
        self.console.print(f"airlock run: {plural(len(self.attempts), 'attempt')}, {self.jobs} at a time; choosing by {self._rule_text()}", markup=False)
        with self._signals(), tempfile.TemporaryDirectory(prefix="airlock-attempts-") as coordination:
            self.coordination = Path(coordination)
            try:
                self._loop()
            finally:
                self._stop_all()
        return self._finish()

    def _rule_text(self) -> str:
        return "fresh-sandbox verify, then the smallest patch, then the fewest steps" if self.rule == "verify" else f"--pick {self.rule}"

    def _loop(self) -> None:
        while True:
            if self.interrupts:
                self.stopping = self.stopping or "interrupted (Ctrl-C)"
                return
            self._poll()
            self._apply_budget()
            self._apply_batch_stop()
            self._start_more()
            if not any(a.state in ("queued", "running") for a in self.attempts):
                return
            time.sleep(POLL_S)

    def _start_more(self) -> None:
        for attempt in self.attempts:
            if sum(a.state == "running" for a in self.attempts) >= self.jobs:
                return
            if attempt.state != "queued":
                continue
            if self.stopping:
                attempt.state, attempt.stopped = "not_started", f"not started: {self.stopping}"
                continue
            attempt.out.mkdir(parents=True, exist_ok=True)
            rate_limit = self.batch.rate_limit_file or self.coordination / "rate-limit"
            coordinated = ["--stop-file", str(self._stop_file(attempt)), "--rate-limit-file", str(rate_limit)]
            args = [*self.args, "--out", str(attempt.out), "--attempt", str(attempt.number), *coordinated]
            attempt.proc = launch(args, _child_env(), attempt.out / LOG_NAME)
            attempt.state = "running"
            self.console.print(f"attempt {attempt.number} started (temperature: {_temperature(attempt.temperature)})", markup=False)
            self._save_provisional()

    def _poll(self) -> None:
        for attempt in self.attempts:
            if attempt.state != "running":
                continue
            attempt.follow()
            if attempt.proc is not None and attempt.proc.poll() is not None:
                attempt.follow()
                attempt.state, attempt.record = "done", read_record(attempt.out)
                self._ended(attempt)

    def _save_provisional(self) -> None:
        if self.provisional is None:
            return
        summaries = [attempt.summary() if attempt.state == "done" else _waiting(attempt) for attempt in self.attempts]
        self.provisional.attempts = AttemptsRecord(rule=self.rule, chosen=None, why="the attempts are running", attempts=summaries)
        self.provisional.save(self.out)

    def _ended(self, attempt: Attempt) -> None:
        self._save_provisional()
        summary = attempt.summary()
        verdict = "" if summary.verify is None else f", verify {'passed' if summary.verify else 'failed'}"
        line = f"attempt {attempt.number}: {summary.status}{verdict}, {plural(summary.steps, 'step')}, {plural(summary.changed_lines, 'changed line')}"
        self.console.print(safe(line + (f" ({summary.error})" if summary.error and summary.status != "completed" else "")), highlight=False)
        if self.stop_at_first_pass and summary.verify is True and summary.status in AGENT_STOPS and not self.stopping:
            self.stopping = f"attempt {attempt.number} passed verify (--stop-at-first-pass)"
            for other in self.attempts:
                if other.state == "running":
                    other.stopped = f"stopped: {self.stopping}"
                    _signal(other, signal.SIGINT)

    def _apply_budget(self) -> None:
        if self.stopping:
            return
        total = Usage()
        for attempt in self.attempts:
            total.add(attempt.usage)
        if (reason := self.guard.budget_exceeded(total)) is None:
            return
        self._stop_after_step(f"the attempts together reached the budget: {reason}")

    def _apply_batch_stop(self) -> None:
        """The batch asked this task to stop (its budget is spent): so are its attempts."""
        if self.stopping or self.batch.stop_file is None or not self.batch.stop_file.exists():
            return
        self._stop_after_step(read_stop_request(self.batch.stop_file) or "the batch asked the task to stop")

    def _stop_after_step(self, why: str) -> None:
        self.stopping = why
        self.console.print(f"[yellow]{safe(why).markup}: no attempt starts, running ones stop after their current step[/]")
        for attempt in self.attempts:
            if attempt.state == "running":
                attempt.stopped = f"stopped: {why}"
                request_stop(self._stop_file(attempt), why)

    def _stop_file(self, attempt: Attempt) -> Path:
        return self.coordination / f"{attempt.number}.stop"

    def _stop_all(self) -> None:
        """On any way out: interrupt what still runs, wait for it to save its work (bounded), kill what is left."""
        running = [a for a in self.attempts if a.state == "running"]
        for attempt in running:
            _signal(attempt, signal.SIGINT)  # the process group may have had the Ctrl-C already: a second one is harmless
        deadline = time.monotonic() + INTERRUPT_GRACE_S
        while any(a.state == "running" for a in self.attempts) and time.monotonic() < deadline:
            time.sleep(POLL_S)
            self._poll()
        for attempt in self.attempts:
            if attempt.state == "running" and attempt.proc is not None:
                attempt.proc.kill()
                attempt.proc.wait()
                attempt.state, attempt.record = "done", read_record(attempt.out)
                attempt.stopped = f"killed after {INTERRUPT_GRACE_S:.0f} s: it did not stop when interrupted"
            elif attempt.state == "queued":
                attempt.state, attempt.stopped = "not_started", f"not started: {self.stopping or 'the run stopped'}"

    def _finish(self) -> int:
        summaries = [attempt.summary() for attempt in self.attempts]
        chosen, why = choose(summaries, self.rule)
        costs = [s.cost_usd for s in summaries if s.status != "not_started"]
        total = None if any(cost is None for cost in costs) else round(sum(c for c in costs if c is not None), 6)
        attempts = AttemptsRecord(rule=self.rule, chosen=chosen, why=why, attempts=summaries, cost_usd=total)
        self._show(summaries, chosen, why)
        record = self._record(chosen, attempts)
        if record is None:
            self.console.print(safe(f"no attempt ran: {self.stopping or why}"), highlight=False)
            if self.provisional is not None:  # the run ended: its record must not stay `running`
                self.provisional.status = "interrupted" if self.interrupts else "budget_exceeded"
                self.provisional.attempts, self.provisional.error = attempts, f"no attempt ran: {self.stopping or why}"
                self.provisional.save(self.out)
            return 130 if self.interrupts else 1
        record.save(self.out)
        return record.exit_code

    def _record(self, chosen: int | None, attempts: AttemptsRecord) -> RunRecord | None:
        """run.json: the chosen attempt's, with every attempt listed; with none chosen, the first attempt's
        description with no patch and why none was chosen: `verify_failed` when none passed verify, else
        `completed` if any attempt completed (else the first attempt's status)."""
        folder = {a.number: a.out for a in self.attempts}
        if chosen is not None:
            shutil.copyfile(folder[chosen] / "patch.diff", self.out / "patch.diff")
            with contextlib.suppress(OSError):
                shutil.copyfile(folder[chosen] / "trajectory.jsonl", self.out / "trajectory.jsonl")
            base = RunRecord.model_validate(read_record(folder[chosen]))
        else:
            (self.out / "patch.diff").write_bytes(b"")
            first = next((record for a in self.attempts if (record := read_record(a.out)) is not None), None)
            if first is None:
                return None
            base = RunRecord.model_validate(first)
            base.patch, base.verify = PatchRecord(), None
            base.error = attempts.why
            if self.rule == "verify":
                base.status = "verify_failed"
            elif any(a.status == "completed" for a in attempts.attempts):
                base.status = "completed"  # nothing to choose, or nothing chosen, but the attempts did their work
        base.attempt, base.attempts, base.cost_usd = None, attempts, attempts.cost_usd
        if self.interrupts:
            base.status = "interrupted"
        return base

    def _show(self, summaries: list[AttemptSummary], chosen: int | None, why: str) -> None:
        table = Table("attempt", "status", "verify", "changed lines", "steps", "cost", "temperature", title="attempts", title_justify="left")
        order = sorted(summaries, key=lambda s: (s.number != chosen, s.number))
        for s in order:
            verify = "—" if s.verify is None else ("passed" if s.verify else "failed")
            cost = "—" if s.cost_usd is None else f"${s.cost_usd:.4f}"
            mark = " (chosen)" if s.number == chosen else ""
            table.add_row(f"{s.number}{mark}", safe(s.status), verify, str(s.changed_lines), str(s.steps), cost, _temperature(s.temperature))
        self.console.print(table)
        self.console.print(safe(f"chosen: attempt {chosen}: {why}" if chosen is not None else f"none chosen: {why}"), highlight=False)

    def _signals(self) -> contextlib.AbstractContextManager[None]:
        """Ctrl-C (or SIGTERM) asks the loop to stop the attempts cleanly instead of raising mid-way."""
        return counted_interrupts(self._interrupted)

    def _interrupted(self) -> None:
        self.interrupts += 1


def _waiting(attempt: Attempt) -> AttemptSummary:
    """An attempt not ended yet, as the provisional record lists it."""
    return AttemptSummary(number=attempt.number, folder=f"{ATTEMPTS_DIR}/{attempt.number}", status=attempt.state, temperature=attempt.temperature)


def _signal(attempt: Attempt, sig: int) -> None:
    if attempt.proc is not None and attempt.proc.poll() is None:
        attempt.proc.send_signal(sig)


def _temperature(value: float | None) -> str:
    return "the API's default" if value is None else f"{value:g}"


def _child_env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": os.environ.get("COLUMNS", "160")}
