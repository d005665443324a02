"""`airlock resume` and `airlock fork`: a run continued from its recorded steps (orchestrator.run.checkpoint).

resume: the same run, in its own folder, after its process was cut short (killed, the host went down,
Ctrl-C, a lost engine). Its trajectory is kept beside the new one as trajectory.resume-N.jsonl; the new
one holds every step again, the replayed ones marked. fork: a new run in a new folder from the state after
step N, optionally told something new.
"""

from __future__ import annotations

import fcntl
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from orchestrator.errors import UsageError
from orchestrator.policy.model import Policy
from orchestrator.run.checkpoint import Continuation, RecordedStep, Replay, complete_steps, replay_until
from orchestrator.run.config import RunConfig, check_out_dir, check_repo, new_run_id
from orchestrator.run.record import AttemptOf, ResumeRecord, RunRecord
from orchestrator.run.run_folder import read_run_folder

LOCK_NAME = ".airlock.lock"  # held by the process running the run, so no second one resumes it meanwhile
# Ended without finishing its work, for a reason that is not the agent's: a resume continues it.
RESUMABLE = ("running", "interrupted", "sandbox_error", "model_error")


def hold_run_lock(out: Path) -> BinaryIO:
    """Take the run folder's lock for as long as this process lives (the kernel lets go when it dies)."""
    handle = (out / LOCK_NAME).open("ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UsageError(f"{out} is being run by another airlock process right now") from None
    return handle


@dataclass(frozen=True)
class Recorded:
    """A run folder, read: run.json, its trajectory's complete steps, and how it started."""

    folder: Path
    run: dict[str, Any]
    steps: list[RecordedStep]
    start: dict[str, Any]  # the run_start event

    def config(self, *, out: Path, run_id: str, repo: Path | None, task: str | None = None) -> RunConfig:
        recorded_repo = Path(str(self.run["repo"]))
        if repo is None and not recorded_repo.is_dir():
            raise UsageError(f"the run's repo no longer exists: {recorded_repo} (point to a copy with --repo PATH)")
        verify, attempt = self.run.get("verify"), self.run.get("attempt")
        return RunConfig(
            repo=check_repo(repo or recorded_repo), task=task or str(self.run["task"]), out=out, run_id=run_id, model=str(self.run["model"]),
            policy=Policy.from_record(self.run["policy"]), verify=verify.get("command") if isinstance(verify, dict) else None,
            backend=str(self.run.get("sandbox", {}).get("backend", "docker")),
            attempt=AttemptOf.model_validate(attempt) if isinstance(attempt, dict) else None,  # its number and temperature go on
        )  # fmt: skip

    @property
    def provider(self) -> str:
        return str(self.run.get("provider", "anthropic"))

    @property
    def text_tool_calls(self) -> bool:
        return self.start.get("text_tool_calls") is True


def read_run(folder: Path) -> Recorded:
    """The run in `folder`; UsageError (one line) for anything that cannot be continued."""
    if (folder / "run.json").is_file() and (folder / "attempts").is_dir():
        try:
            several = json.loads((folder / "run.json").read_text(encoding="utf-8")).get("attempts") is not None
        except (OSError, ValueError, AttributeError):
            several = False
        if several:  # the folder chose (or was choosing) among attempts: each is a run of its own
            raise UsageError(f"{folder} holds several attempts: resume an unfinished one (airlock resume {folder / 'attempts' / 'N'}) or run them again")
    run, events = read_run_folder(folder, (), ("run_id", "repo", "task", "model"), "continued")
    start = next((event for event in events if event.get("type") == "run_start"), {})
    return Recorded(folder.resolve(), run, complete_steps(events), start)


def prepare_resume(recorded: Recorded, repo: Path | None) -> tuple[RunConfig, Continuation]:
    """The run, ready to be resumed in its own folder: the replay of its complete steps, its clock, its record."""
    run, folder = recorded.run, recorded.folder
    status = str(run.get("status"))
    if status not in RESUMABLE:
        raise UsageError(f"{folder} ended with {status}: there is nothing to resume (`airlock fork` starts a new run from any of its steps)")
    hold_run_lock(folder).close()  # only a check here: the run takes the lock itself
    config = recorded.config(out=folder, run_id=str(run["run_id"]), repo=repo)
    resumes = [ResumeRecord.model_validate(entry) for entry in run.get("resumes") or []]
    steps = recorded.steps
    resume = ResumeRecord(
        at=datetime.now(timezone.utc).isoformat(timespec="seconds"), previous_status=status, replayed_steps=len(steps),
        from_step=len(steps) + 1, trajectory=f"trajectory.resume-{len(resumes) + 1}.jsonl",
    )  # fmt: skip
    carried = {"started_at": run.get("started_at"), "resumes": [*resumes, resume], "forked_from": run.get("forked_from")}
    elapsed = steps[-1].elapsed_s if steps else 0.0
    return config, Continuation(Replay(steps), elapsed, carried, keep_trajectory_as=resume.trajectory)


def prepare_fork(recorded: Recorded, at_step: int, out: Path | None, task: str | None, repo: Path | None) -> tuple[RunConfig, Continuation]:
    """A new run from the state after step `at_step` of the recorded one, told `task` next if given."""
    steps = replay_until(recorded.steps, at_step, str(recorded.folder))
    run_id = new_run_id()
    config = recorded.config(out=check_out_dir(out or Path("airlock-runs") / f"fork-{run_id}"), run_id=run_id, repo=repo)
    forked_from = {"run": str(recorded.folder), "run_id": recorded.run.get("run_id"), "at_step": at_step, "task": task}
    return config, Continuation(Replay(steps, then=task, count_usage=False), 0.0, {"forked_from": forked_from})


def resumed_banner(record: RunRecord) -> str:
    last = record.resumes[-1]
    return (
        f"RESUME of run {record.run_id} ({last.previous_status}): {last.replayed_steps} recorded steps replayed "
        f"without model requests, then live from step {last.from_step}"
    )


def forked_banner(forked_from: dict[str, Any], replayed: int) -> str:
    told = " with new instructions" if forked_from.get("task") else ""
    return f"FORK of run {forked_from.get('run_id')} at step {forked_from.get('at_step')}: {replayed} recorded steps replayed, then live{told}"
