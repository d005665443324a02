"""run.json: the summary of one run, written when it starts and again when it ends."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from orchestrator.conversation import Usage

Status = Literal[
    "running", "completed", "verify_failed", "max_steps", "timeout", "budget_exceeded", "stuck", "patch_rejected",
    "setup_failed", "model_error", "sandbox_error", "interrupted", "replay_diverged",
]  # fmt: skip

EXIT_CODES: dict[str, int] = {
    "completed": 0,
    "verify_failed": 1,
    "max_steps": 1,
    "timeout": 1,
    "budget_exceeded": 1,
    "stuck": 1,
    "patch_rejected": 1,
    "setup_failed": 1,
    "replay_diverged": 1,
    "model_error": 4,
    "sandbox_error": 3,
    "interrupted": 130,
}
# How the agent may stop by itself or at a limit: with --verify, a passing verify makes any of these a success.
AGENT_STOPS = ("completed", "max_steps", "timeout", "budget_exceeded", "stuck")


def succeeded(status: str | None, verify: Any) -> bool:
    """The run's success (exit 0): with a verify command, its verdict, when the agent stopped by itself or at
    a limit; without one, `completed`. Errors, a rejected patch and interruptions never succeed.

    `verify`: the VerifyRecord, or run.json's `verify` as read (a dict), or None when no verify was given."""
    if isinstance(verify, BaseModel):
        verify = verify.model_dump()
    if not isinstance(verify, dict):
        return status == "completed"
    return status in AGENT_STOPS and verify.get("passed") is True and not verify.get("skipped")


class PatchRecord(BaseModel):
    files_changed: int = 0
    insertions: int = 0
    deletions: int = 0
    changes: list[dict[str, Any]] = Field(default_factory=list)
    refused: list[dict[str, str]] = Field(default_factory=list)
    exported: bool = False


class VerifyRecord(BaseModel):
    command: str
    exit_code: int | None = None
    passed: bool = False
    output_tail: str = ""
    skipped: str | None = None
    duration_s: float | None = None  # of the verify sandbox: start, copy-in, patch, command, removal


class SetupRecord(BaseModel):
    """The setup phase: what it ran, whether the environment came from the cache, whom it contacted."""

    commands: list[str] = Field(default_factory=list)  # as run, airlock's virtualenv first
    detected: list[str] = Field(default_factory=list)  # what `auto` found, one line each
    ecosystems: list[str] = Field(default_factory=list)
    key: str | None = None
    key_files: list[str] = Field(default_factory=list)
    # What the setup sandbox got: `mode` "manifests" (the key files only) or "repo" (every file, `why`), `files`
    # copied in, and `repo_code`: why the repo's own code may run in the build (the key then names the repo).
    inputs: dict[str, Any] | None = None
    trust: str = ""  # which CA certificates the setup trusted: --setup-ca's, the host's bundle, or the image's own
    image: str | None = None  # the environment image the agent and verify start from
    cache: Literal["hit", "build"] | None = None
    duration_s: float | None = None
    exit_code: int | None = None
    allow_hosts: list[str] = Field(default_factory=list)
    hosts: list[dict[str, Any]] = Field(default_factory=list)  # host, allowed, requests, bytes
    refused: list[str] = Field(default_factory=list)  # hosts the allowlist refused
    created: list[str] = Field(default_factory=list)  # what setup made in the repo, carried into the workspace
    modified: list[str] = Field(default_factory=list)  # the repo's files setup changed (not carried: the agent gets the originals)
    deleted: list[str] = Field(default_factory=list)
    env_bytes: int | None = None
    log_tail: str = ""
    error: str | None = None


class ResumeRecord(BaseModel):
    """One `airlock resume` of the run: the steps replayed from its trajectory, and where the live part began."""

    at: str  # when the resume started
    previous_status: str  # what run.json said before: running (the process was killed), interrupted, ...
    replayed_steps: int  # complete steps served from the recording, their tool calls run again and matched
    from_step: int  # the first step asked of the model
    trajectory: str  # the interrupted run's trajectory, kept beside the new one


class AttemptOf(BaseModel):
    """This run is attempt `number` of `of` at the same task (`airlock run --attempts`): what made it differ."""

    number: int
    of: int
    temperature: float | None  # None: the API's default


class AttemptSummary(BaseModel):
    """One attempt, as the run that chose among them lists it (orchestrator.batch.attempts)."""

    number: int
    folder: str  # relative to the run's folder: attempts/N
    status: str  # the attempt's run status, or not_started
    verify: bool | None = None  # its fresh-sandbox verify passed; None: no verify, or not run
    changed_lines: int = 0  # insertions + deletions of its patch
    steps: int = 0
    cost_usd: float | None = None
    temperature: float | None = None
    stopped: str | None = None  # why airlock stopped it, or never started it
    error: str | None = None


class AttemptsRecord(BaseModel):
    """Several attempts at one task, and the one chosen: its patch is the run's patch.diff."""

    rule: str  # verify, smallest, first or none
    chosen: int | None  # the chosen attempt's number; None: none qualified (or --pick none)
    why: str
    attempts: list[AttemptSummary] = Field(default_factory=list)
    cost_usd: float | None = None  # of all the attempts together; None when a price is unknown


class RunRecord(BaseModel):
    run_id: str
    status: Status = "running"
    repo: str
    task: str
    model: str  # as requested
    served_model: str | None = None  # what the API says served the run (openai: the server's only model, else the replies' model field)
    provider: str = "anthropic"
    started_at: str
    duration_s: float = 0.0
    steps: int = 0
    tool_calls: int = 0
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float | None = None  # None when the model's price is unknown: never guessed
    patch: PatchRecord = Field(default_factory=PatchRecord)
    verify: VerifyRecord | None = None
    setup: SetupRecord | None = None
    sandbox: dict[str, Any] = Field(default_factory=dict)
    snapshot: dict[str, Any] = Field(default_factory=dict)
    policy: dict[str, Any] = Field(default_factory=dict)  # the effective policy
    policy_events: list[dict[str, Any]] = Field(default_factory=list)  # every limit hit and refusal
    resumes: list[ResumeRecord] = Field(default_factory=list)
    forked_from: dict[str, Any] | None = None  # run (folder), run_id, at_step, task (None: the same)
    attempt: AttemptOf | None = None  # one attempt of several (`--attempts`)
    attempts: AttemptsRecord | None = None  # the run that chose among several attempts: this record is the chosen one's
    error: str | None = None

    @property
    def exit_code(self) -> int:
        if succeeded(self.status, self.verify):
            return 0
        return 1 if self.status in AGENT_STOPS else EXIT_CODES.get(self.status, 1)

    def save(self, out_dir: Path) -> None:
        """Write run.json atomically, so a reader never sees half a file."""
        tmp = out_dir / "run.json.tmp"
        tmp.write_text(json.dumps(self.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, out_dir / "run.json")
