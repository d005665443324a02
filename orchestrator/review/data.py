"""Read run folders into typed models for review, tolerating whatever a crash or a kill left behind.

A run folder holds `run.json`, `trajectory.jsonl` and `patch.diff` (and `patch.rejected.diff` when
the patch was over the policy's limits). Any of them may be missing, `run.json` may still say
`running`, the last trajectory line may be torn, a field may be malformed: each problem becomes a
note on the run, never an exception, so one broken run cannot hide the others from a reviewer.

A batch folder holds one run folder per task (`results/<id>/`), and maybe `summary.json`; its
order of ids is used when present, its other fields are shown as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.conversation import Usage
from orchestrator.errors import UsageError
from orchestrator.review.diff import FileDiff, file_diffs
from orchestrator.review.flags import SEVERITY_ORDER, Flag
from orchestrator.run.record import PatchRecord, succeeded

RUN_FILES = ("run.json", "trajectory.jsonl", "patch.diff")
MAX_OUTPUT_CHARS = 40_000  # one tool output kept for the report; the trajectory file has it all

# ----------------------------------------------------------------------------- run.json


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class VerifyInfo(_Loose):
    command: str = ""
    exit_code: int | None = None
    passed: bool = False
    output_tail: str = ""
    skipped: str | None = None


class SetupInfo(_Loose):
    commands: list[str] = Field(default_factory=list)
    detected: list[str] = Field(default_factory=list)
    ecosystems: list[str] = Field(default_factory=list)
    image: str | None = None
    cache: str | None = None
    duration_s: float | None = None
    exit_code: int | None = None
    hosts: list[dict[str, Any]] = Field(default_factory=list)
    refused: list[str] = Field(default_factory=list)
    modified: list[str] = Field(default_factory=list)
    deleted: list[str] = Field(default_factory=list)

    def lines(self) -> list[str]:
        """The setup phase for a reviewer, one fact a line (shared by `airlock show` and the HTML report)."""
        took = f" in {self.duration_s:.1f} s" if self.duration_s is not None else ""
        if self.cache == "hit":
            head = f"environment {self.image} from the cache: no setup ran, no network{took}"
        elif self.cache == "build":
            head = f"built environment {self.image}{took}"
        elif self.commands:
            head = f"failed{f' (exit {self.exit_code})' if self.exit_code is not None else ''}{took}"
        else:
            head = "nothing to install found"
        out = [head + (f" · {', '.join(self.ecosystems)}" if self.ecosystems else "")]
        out += [f"detected: {note}" for note in self.detected]
        if self.cache != "hit":
            out += [f"$ {command}" for command in self.commands]
        for host in self.hosts:
            verdict = "allowed" if host.get("allowed") else "REFUSED"
            out.append(f"egress {verdict}: {host.get('host')} ({host.get('requests', 0)} requests, {int(host.get('bytes', 0)) / 1024:.0f} KiB)")
        if self.modified or self.deleted:
            out.append(f"setup changed repo files (the agent got the originals): {', '.join([*self.modified, *self.deleted])}")
        return out


class RunSummary(_Loose):
    """run.json, every field optional: `record.RunRecord` is the writer's model, this is a reader's."""

    run_id: str = ""
    status: str = "unknown"
    repo: str = ""
    task: str = ""
    model: str = ""
    served_model: str | None = None
    started_at: str = ""
    duration_s: float | None = None
    steps: int = 0
    tool_calls: int = 0
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float | None = None
    patch: PatchRecord = Field(default_factory=PatchRecord)  # every field has a default: fine for reading too
    verify: VerifyInfo | None = None
    setup: SetupInfo | None = None
    sandbox: dict[str, Any] = Field(default_factory=dict)
    snapshot: dict[str, Any] = Field(default_factory=dict)  # what was copied in, and what the policy hid
    policy_events: list[dict[str, Any]] = Field(default_factory=list)
    resumes: list[dict[str, Any]] = Field(default_factory=list)
    forked_from: dict[str, Any] | None = None
    attempts: dict[str, Any] | None = None  # `airlock run --attempts`: how the one this record is was chosen
    error: str | None = None


def _read_summary(path: Path, problems: list[str]) -> RunSummary | None:
    if not path.is_file():
        problems.append("run.json is missing")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except ValueError as exc:
        problems.append(f"run.json is not valid JSON ({exc})")
        return None
    if not isinstance(data, dict):
        problems.append("run.json is not a JSON object")
        return None
    for _ in range(len(data) + 1):  # drop the fields that do not validate, one by one, and keep the rest
        try:
            return RunSummary.model_validate(data)
        except ValidationError as exc:
            bad = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
            problems.append(f"run.json: unreadable field(s) {', '.join(sorted(bad))} ignored")
            data = {k: v for k, v in data.items() if k not in bad}
            if not bad:
                break
    return None


# ----------------------------------------------------------------------------- trajectory.jsonl


class ToolCall(BaseModel):
    id: str = ""
    name: str = ""
    input: Any = None
    output: str = ""
    output_chars: int = 0  # length of the full output in the trajectory
    is_error: bool = False
    meta: dict[str, Any] = Field(default_factory=dict)
    duration_s: float | None = None
    t: float | None = None

    @property
    def exit_code(self) -> int | None:
        code = self.meta.get("exit_code")
        return code if isinstance(code, int) else None


class Step(BaseModel):
    number: int
    t: float | None = None  # seconds since the run started, when the response came
    duration_s: float | None = None  # how long the model took
    text: str = ""  # the model's plan or answer
    thinking: str = ""
    stop_reason: str | None = None
    output_tokens: int | None = None
    notes: list[str] = Field(default_factory=list)  # context trims and what the model adapter worked around
    tool_calls: list[ToolCall] = Field(default_factory=list)


class Trajectory(BaseModel):
    present: bool = False
    version: int | None = None
    steps: list[Step] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)  # internal errors the run recorded
    ended: bool = False
    end_status: str | None = None
    end_error: str | None = None
    bad_lines: int = 0
    torn_last_line: bool = False
    start: dict[str, Any] = Field(default_factory=dict)


def _clip(text: str) -> str:
    if len(text) <= MAX_OUTPUT_CHARS:
        return text
    half = MAX_OUTPUT_CHARS // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half:,} characters not included in the report: see trajectory.jsonl ...]\n{text[-half:]}"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def read_trajectory(path: Path) -> Trajectory:
    """Group a trajectory's events into steps: the model's text, then the tool calls it made."""
    traj = Trajectory()
    if not path.is_file():
        return traj
    traj.present = True
    raw_lines = path.read_bytes().split(b"\n")
    steps: dict[int, Step] = {}
    for index, raw in enumerate(raw_lines):
        if not raw.strip():
            continue
        try:
            event = json.loads(raw.decode("utf-8", "replace"))
        except ValueError:
            event = None
        if not isinstance(event, dict):
            is_last = all(not rest.strip() for rest in raw_lines[index + 1 :])
            traj.torn_last_line = traj.torn_last_line or (is_last and not raw.endswith(b"}"))
            traj.bad_lines += 1
            continue
        _add_event(traj, steps, event)
    traj.steps = [steps[n] for n in sorted(steps)]
    return traj


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _seconds(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _step(steps: dict[int, Step], event: dict[str, Any]) -> Step:
    number = _int(event.get("step"))
    number = max(steps, default=0) if number is None else number
    return steps.setdefault(number, Step(number=number))


def _add_event(traj: Trajectory, steps: dict[int, Step], event: dict[str, Any]) -> None:
    kind, t = event.get("type"), _seconds(event.get("t"))
    if kind == "run_start":
        traj.start, traj.version = event, _int(event.get("version"))
    elif kind == "model_response":
        step = _step(steps, event)
        # Version 2 records the provider-neutral message; version 1 only the Anthropic response.
        response = _dict(event.get("response"))
        message = _dict(event.get("message")) if "message" in event else response
        content = message.get("content")
        blocks = [_dict(b) for b in content] if isinstance(content, list) else []
        step.t, step.duration_s = t, _seconds(event.get("duration_s"))
        step.text = "\n\n".join(_text(b.get("text", "")) for b in blocks if b.get("type") == "text").strip()
        step.thinking = "\n\n".join(_text(b.get("thinking", "")) for b in blocks if b.get("type") == "thinking").strip()
        stop = event.get("stop_reason", response.get("stop_reason"))
        step.stop_reason = stop if isinstance(stop, str) else None
        step.output_tokens = _int(_dict(event.get("usage", response.get("usage"))).get("output_tokens"))
        notes = event.get("notes")
        step.notes += [_text(note) for note in notes] if isinstance(notes, list) else []
    elif kind == "context_trimmed":
        stubbed = event.get("stubbed")
        count = len(stubbed) if isinstance(stubbed, list) else "some"
        _step(steps, event).notes.append(f"context trimmed ({_text(event.get('reason', ''))}): {count} old tool results replaced by a stub")
    elif kind == "tool_call":
        output = _text(event.get("output", ""))
        _step(steps, event).tool_calls.append(
            ToolCall(
                id=_text(event.get("id", "")), name=_text(event.get("name", "")), input=event.get("input"),
                output=_clip(output), output_chars=len(output), is_error=event.get("is_error") is True,
                meta=_dict(event.get("meta")), duration_s=_seconds(event.get("duration_s")), t=t,
            )
        )  # fmt: skip
    elif kind == "error":
        traj.errors.append(_text(event.get("error", "")))
    elif kind == "run_end":
        traj.ended = True
        traj.end_status = _text(event.get("status")) if event.get("status") is not None else None
        traj.end_error = _text(event.get("error")) if event.get("error") is not None else None


# ----------------------------------------------------------------------------- one run


def model_label(summary: RunSummary) -> str:
    """The model asked for, and what served it when the server says otherwise ("" when neither is known)."""
    served = summary.served_model
    return summary.model + (f" (served: {served})" if served and served != summary.model else "")


class RunData(BaseModel):
    """Everything the report and `airlock show` need about one run."""

    folder: Path
    name: str  # the task id in a batch (the folder's name)
    title: str = ""  # what a reader calls it: the task id in a batch, the task's first line for a run of its own
    summary: RunSummary
    diffs: list[FileDiff] = Field(default_factory=list)
    diff_source: str | None = None  # the file the diff was read from
    trajectory: Trajectory = Field(default_factory=Trajectory)
    flags: list[Flag] = Field(default_factory=list)  # run-level findings; per-file ones are on the diffs
    problems: list[str] = Field(default_factory=list)  # what was missing or unreadable
    attempts: list[Attempt] = Field(default_factory=list)  # a run of several attempts: each, the chosen one first

    @property
    def status(self) -> str:
        return self.summary.status

    @property
    def succeeded(self) -> bool:
        return succeeded(self.summary.status, self.summary.verify)

    @property
    def heading(self) -> str:
        return self.title or self.name

    @property
    def all_flags(self) -> list[Flag]:
        flags = [*self.flags, *(flag for diff in self.diffs for flag in diff.flags)]
        return sorted(flags, key=lambda f: SEVERITY_ORDER[f.severity])

    def count(self, severity: str) -> int:
        return sum(flag.severity == severity for flag in self.all_flags)

    @property
    def files_changed(self) -> int:
        return sum(diff.change is not None for diff in self.diffs) if self.diff_source else self.summary.patch.files_changed

    @property
    def insertions(self) -> int:
        return sum(diff.insertions for diff in self.diffs) if self.diff_source else self.summary.patch.insertions

    @property
    def deletions(self) -> int:
        return sum(diff.deletions for diff in self.diffs) if self.diff_source else self.summary.patch.deletions


class Attempt(BaseModel):
    """One attempt of a run of several, as its run.json lists it, with its own run folder when it ran."""

    number: int
    status: str
    verify: bool | None = None
    changed_lines: int = 0
    steps: int = 0
    cost_usd: float | None = None
    temperature: float | None = None
    chosen: bool = False
    note: str | None = None  # why airlock stopped it or never started it
    run: RunData | None = None


RunData.model_rebuild()  # its attempts are runs too


def _attempts(folder: Path, listed: dict[str, Any] | None, problems: list[str]) -> list[Attempt]:
    """The attempts run.json lists (their numbers, not their folder names, say where they are), chosen first."""
    if not isinstance(listed, dict) or not isinstance(listed.get("attempts"), list):
        return []
    attempts = []
    for row in listed["attempts"]:
        try:
            attempt = Attempt.model_validate({**row, "note": row.get("stopped"), "chosen": row.get("number") == listed.get("chosen"), "run": None})
        except (ValidationError, TypeError, AttributeError):
            problems.append("run.json lists an attempt that cannot be read")
            continue
        own = folder / "attempts" / str(attempt.number)
        if is_run_folder(own):
            attempt.run = load_run(own, f"attempt {attempt.number}")
        attempts.append(attempt)
    return sorted(attempts, key=lambda a: (not a.chosen, a.number))


def load_run(folder: Path, name: str | None = None) -> RunData:
    problems: list[str] = []
    summary = _read_summary(folder / "run.json", problems)
    trajectory = read_trajectory(folder / "trajectory.jsonl")
    if not trajectory.present:
        problems.append("trajectory.jsonl is missing")
    if summary is None:  # recover what the trajectory knows
        start = trajectory.start
        summary = RunSummary(
            run_id=_text(start.get("run_id", "")), model=_text(start.get("model", "")), task=_text(start.get("task", "")),
            status=trajectory.end_status or "unknown",
        )  # fmt: skip
    run = RunData(folder=folder, name=name or folder.name, summary=summary, trajectory=trajectory, problems=problems)
    run.attempts = _attempts(folder, summary.attempts, problems)
    _load_diff(run)
    run.flags = _run_flags(run)
    return run


def _load_diff(run: RunData) -> None:
    patch, rejected = run.folder / "patch.diff", run.folder / "patch.rejected.diff"
    source = patch if patch.is_file() and patch.stat().st_size else rejected if rejected.is_file() else patch if patch.is_file() else None
    if source is None:
        run.problems.append("patch.diff is missing")
        return
    raw = source.read_bytes()
    run.diff_source = source.name
    run.diffs = file_diffs(raw)


def _run_flags(run: RunData) -> list[Flag]:
    summary, flags = run.summary, []
    if summary.status == "running" or (run.trajectory.present and not run.trajectory.ended):
        flags.append(Flag(severity="attention", code="partial", message="the run did not finish (killed or still running): what is shown is what it left"))
    if run.diff_source == "patch.rejected.diff":
        flags.append(
            Flag(
                severity="attention",
                code="rejected",
                message="the patch was over the policy's limits and not handed out: shown from patch.rejected.diff",
            )
        )
    for refused in summary.patch.refused:
        path, reason = _text(refused.get("path", "?")), _text(refused.get("reason", ""))
        flags.append(Flag(severity="attention", code="refused", message=f"refused from the patch: {reason}", path=path))
    if summary.patch.exported and run.diff_source == "patch.diff" and not _matches_record(run):
        flags.append(Flag(severity="danger", code="mismatch", message="patch.diff does not match the changes run.json lists: it was changed after the run"))
    for event in summary.policy_events:
        flags.append(Flag(severity="note", code="policy", message=f"policy: {_text(event.get('rule', ''))}: {_text(event.get('detail', ''))}"))
    for resume in summary.resumes:
        message = (
            f"resumed {_text(resume.get('at', ''))} after it ended {_text(resume.get('previous_status', '?'))}: "
            f"{_text(resume.get('replayed_steps', '?'))} recorded steps replayed without model requests, live from step {_text(resume.get('from_step', '?'))}"
        )
        flags.append(Flag(severity="note", code="resumed", message=message))
    if forked := summary.forked_from:
        told = f", then told: {_text(forked['task'])}" if forked.get("task") else ""
        message = f"forked from run {_text(forked.get('run_id', '?'))} ({_text(forked.get('run', ''))}) at step {_text(forked.get('at_step', '?'))}{told}"
        flags.append(Flag(severity="note", code="forked", message=message))
    if hidden := _hidden_note(summary.snapshot):
        flags.append(Flag(severity="note", code="hidden", message=hidden))
    if run.trajectory.bad_lines:
        what = "its last line is torn" if run.trajectory.torn_last_line and run.trajectory.bad_lines == 1 else f"{run.trajectory.bad_lines} unreadable line(s)"
        flags.append(Flag(severity="note", code="trajectory", message=f"trajectory.jsonl: {what}"))
    return flags


def _hidden_note(snapshot: dict[str, Any]) -> str | None:
    """What the policy kept out of the sandbox: a test that failed for a missing fixture is then no mystery."""
    hidden = [_text(path) for path in snapshot.get("hidden") or [] if path is not None]
    history = _dict(snapshot.get("history"))
    removed = _int(history.get("hidden_paths")) or 0
    if not hidden and not removed:
        return None
    shown = ", ".join(hidden[:3]) + (", …" if len(hidden) > 3 else "")
    note = f"hidden by policy: {len(hidden)} path{'s' if len(hidden) != 1 else ''} not copied into the sandbox" + (f", e.g. {shown}" if hidden else "")
    return note + (f"; {removed} removed from its git history" if removed else "")


def _matches_record(run: RunData) -> bool:
    from orchestrator.review.diff import shown_name

    listed = [(c.get("kind"), c.get("old_path"), c.get("new_path"), c.get("insertions", 0), c.get("deletions", 0)) for c in run.summary.patch.changes]
    found = [(d.kind, shown_name(d.change.old_path) or None, shown_name(d.change.new_path) or None, d.insertions, d.deletions) for d in run.diffs if d.change]
    return listed == found and all(d.change is not None for d in run.diffs)


# ----------------------------------------------------------------------------- a folder of runs


class NotRun(BaseModel):
    """A task summary.json lists that has no run folder (never started, invalid, skipped by a budget)."""

    name: str
    status: str = "not_started"
    error: str | None = None


class Collection(BaseModel):
    root: Path
    single: bool  # the root is itself a run folder
    runs: list[RunData]
    batch: dict[str, Any] | None = None  # summary.json, when there is one
    not_run: list[NotRun] = Field(default_factory=list)


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in RUN_FILES)


def load_collection(path: Path) -> Collection:
    """The runs in a batch results folder (one subfolder per run) or a single run's folder."""
    if not path.is_dir():
        raise UsageError(f"{path} is not a folder")
    folders = sorted(p for p in path.iterdir() if is_run_folder(p) and not p.name.startswith("."))
    if (path / "run.json").is_file() or (not folders and is_run_folder(path)):
        run = load_run(path)
        run.title = _task_title(run.summary.task) or run.name  # its folder's name ("out") says little
        return Collection(root=path, single=True, runs=[run])
    if not folders:
        raise UsageError(f"no runs in {path}: expected a run folder (with run.json) or a folder of them")
    batch = _read_batch_summary(path / "summary.json")
    order = _batch_order(batch, [f.name for f in folders]) if batch is not None else []
    rank = {name: i for i, name in enumerate(order)}
    folders.sort(key=lambda f: (rank.get(f.name, len(rank)), f.name))
    runs = [load_run(f) for f in folders]
    return Collection(root=path, single=False, runs=runs, batch=batch, not_run=_not_run(batch, {f.name for f in folders}))


def _task_title(task: str, limit: int = 80) -> str:
    line = next((line.strip() for line in task.splitlines() if line.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _read_batch_summary(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except ValueError:
        return {"(summary.json)": "not valid JSON"}
    return data if isinstance(data, dict) else {"(summary.json)": "not a JSON object"}


def _not_run(batch: dict[str, Any] | None, names: set[str]) -> list[NotRun]:
    """Tasks summary.json lists under "tasks" (as `airlock batch` writes it) with no run folder here."""
    rows = batch.get("tasks") if batch else None
    if not isinstance(rows, list):
        return []
    missing = []
    for row in rows:
        if isinstance(row, dict) and isinstance(row.get("id"), str) and row["id"] not in names:
            status, error = row.get("status"), row.get("error")
            missing.append(NotRun(name=row["id"], status=status if isinstance(status, str) else "not_started", error=error if isinstance(error, str) else None))
    return missing


def _batch_order(batch: Any, names: list[str]) -> list[str]:
    """Run folder names in the order summary.json first mentions them (its exact layout is the batch's own)."""
    wanted, seen = set(names), []

    def walk(node: Any) -> None:
        if isinstance(node, str) and node in wanted and node not in seen:
            seen.append(node)
        elif isinstance(node, dict):
            for key, value in node.items():
                walk(key)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(batch)
    return seen
