"""`airlock replay`: re-run a recorded run with its recorded model responses, and say where it diverges.

The responses are served in order by the local scripted model server, in the recorded provider's wire
API, and the run goes through the normal path (real SDK, the same adapter, agent loop, fresh sandbox,
patch export, verify), so only the model is replayed:
every tool call really runs again. The tool results and the patch are then compared with the recording.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any

from rich.console import Console

from orchestrator.errors import UsageError
from orchestrator.policy.model import Policy
from orchestrator.providers import DEFAULT_PROVIDER, check_provider, make_provider
from orchestrator.run.config import RunConfig, check_out_dir, check_repo, new_run_id
from orchestrator.run.record import RunRecord
from orchestrator.run.run_folder import read_run_folder
from orchestrator.run.trajectory import read_events
from orchestrator.terminal import safe

DIFF_LINES = 40  # per divergence, in the report and in replay.json
IGNORED = "<ignored>"
COMPARED = ("name", "input", "output", "is_error")


@dataclass(frozen=True)
class Recording:
    source: Path
    run: dict[str, Any]  # run.json
    responses: list[dict[str, Any]]  # every model_response's `response`, in order
    tool_calls: list[dict[str, Any]]
    patch: bytes
    text_tool_calls: bool = True  # whether the run read tool calls written as text (older recordings did not say: they did not)


def load_recording(source: Path) -> Recording:
    """The recorded run in `source`; UsageError (one line) for anything that cannot be replayed."""
    run, events = read_run_folder(source, ("patch.diff",), ("repo", "task", "model"), "replayed")
    responses = [event["response"] for event in events if event.get("type") == "model_response" and isinstance(event.get("response"), dict)]
    if not responses:
        raise UsageError(f"{source / 'trajectory.jsonl'} holds no model responses: there is nothing to replay")
    tool_calls = [event for event in events if event.get("type") == "tool_call"]
    start = next((event for event in events if event.get("type") == "run_start"), {})
    text_tool_calls = start.get("text_tool_calls") is True
    return Recording(source, run, responses, tool_calls, (source / "patch.diff").read_bytes(), text_tool_calls)


def compile_ignores(patterns: list[str]) -> list[re.Pattern[str]]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise UsageError(f"--ignore-regex {pattern!r} is not a valid regular expression: {exc}") from None
    return compiled


def _normalised(output: str, ignores: list[re.Pattern[str]]) -> str:
    for pattern in ignores:
        output = pattern.sub(IGNORED, output)
    return output


def _output_diff(recorded: str, replayed: str) -> list[str]:
    lines = list(difflib.unified_diff(recorded.splitlines(), replayed.splitlines(), "recorded", "replayed", lineterm="", n=1))
    if len(lines) > DIFF_LINES:
        lines = [*lines[:DIFF_LINES], f"… ({len(lines) - DIFF_LINES} more diff lines)"]
    return lines


def compare_calls(recorded: list[dict[str, Any]], replayed: list[dict[str, Any]], ignores: list[re.Pattern[str]]) -> list[dict[str, Any]]:
    """One entry per tool call (in order) whose name, input, output or is_error differs, or that only one side made."""
    divergences: list[dict[str, Any]] = []
    for index, (old, new) in enumerate(zip_longest(recorded, replayed), 1):
        either = old or new
        entry: dict[str, Any] = {"index": index, "step": either.get("step"), "tool": either.get("name")}
        if old is None or new is None:
            divergences.append(entry | {"missing_in": "recording" if old is None else "replay"})
            continue
        old_view = {**old, "output": _normalised(str(old.get("output", "")), ignores)}
        new_view = {**new, "output": _normalised(str(new.get("output", "")), ignores)}
        fields = [name for name in COMPARED if old_view.get(name) != new_view.get(name)]
        if fields:
            diff = _output_diff(old_view["output"], new_view["output"]) if "output" in fields else []
            divergences.append(entry | {"fields": fields, "diff": diff})
    return divergences


def replay(source: Path, out: Path | None, repo: Path | None, ignore_regex: list[str], console: Console) -> int:
    """Replay the run in `source` into `out`; returns the exit code (0 reproduced exactly, 1 diverged, else as `run`)."""
    from orchestrator.providers.scripted import ScriptedModelServer
    from orchestrator.run.runner import Run

    recording = load_recording(source)
    ignores = compile_ignores(ignore_regex)
    recorded_repo = Path(str(recording.run["repo"]))
    if repo is None and not recorded_repo.is_dir():
        raise UsageError(f"the recorded repo no longer exists: {recorded_repo} (point to a copy with --repo PATH)")
    verify = recording.run.get("verify")
    run_id = new_run_id()
    config = RunConfig(
        repo=check_repo(repo or recorded_repo), task=str(recording.run["task"]), out=check_out_dir(out or Path("airlock-runs") / f"replay-{run_id}"),
        run_id=run_id, model=str(recording.run["model"]), policy=Policy.from_record(recording.run["policy"]),
        verify=verify.get("command") if isinstance(verify, dict) else None,
    )  # fmt: skip
    turns = len(recording.responses)
    provider = check_provider(str(recording.run.get("provider", DEFAULT_PROVIDER)))
    # The recorded bodies are the provider's response JSON already; the local server hands them out in
    # order through the same adapter, so no request leaves the machine and no API key is read.
    with ScriptedModelServer(list(recording.responses)) as api:
        base_url = api.openai_base_url if provider == "openai" else api.base_url
        model = make_provider(provider, config.model, api_key="replay", base_url=base_url, text_tool_calls=recording.text_tool_calls)
        banner = f"REPLAY of {recording.source}: {turns} recorded model responses served locally, no API calls; every tool call runs again"
        record = Run(config, model, console).execute(banner)
        requested = len(api.requests)
    ran_out = requested > turns
    if ran_out:  # the scripted server's "no more replies" 400, said plainly
        record.error = f"the replay needed more model turns than were recorded ({turns})"
        record.save(config.out)
    return _report(recording, record, config.out, ignores, ignore_regex, ran_out, requested, console)


def _report(
    recording: Recording, record: RunRecord, out: Path, ignores: list[re.Pattern[str]], ignore_regex: list[str],
    ran_out: bool, requested: int, console: Console,
) -> int:  # fmt: skip
    replayed_calls = [event for event in read_events(out / "trajectory.jsonl") if event.get("type") == "tool_call"]
    divergences = compare_calls(recording.tool_calls, replayed_calls, ignores)
    identical_patch = (out / "patch.diff").read_bytes() == recording.patch
    recorded_status = recording.run.get("status")
    report = {
        "source": str(recording.source.resolve()),
        "identical_patch": identical_patch,
        "divergences": divergences,
        "status": record.status,
        "recorded_status": recorded_status,
        "model_turns": {"recorded": len(recording.responses), "requested": requested},
        "ran_out_of_turns": ran_out,
        "ignore_regex": ignore_regex,
    }
    (out / "replay.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    console.rule("replay")
    console.print(f"source {safe(recording.source).markup} → replay {safe(out).markup}")
    for entry in divergences:
        where = f"tool call #{entry['index']} (step {entry['step']}, {entry['tool']})"
        what = (
            f"only in the {'recording' if entry['missing_in'] == 'replay' else 'replay'}" if "missing_in" in entry else f"{', '.join(entry['fields'])} differ"
        )
        console.print(f"[yellow]≠[/] {safe(where).markup}: {safe(what).markup}")
        for line in entry.get("diff", []):
            style = "green" if line.startswith("+") else "red" if line.startswith("-") else "dim"
            console.print(safe("    " + line, style))
    if ran_out:
        console.print(f"[red]the replay needed more model turns than were recorded[/] ({len(recording.responses)} recorded)")
    same_status = record.status == recorded_status
    console.print(f"tool calls: {len(recording.tool_calls)} recorded, {len(replayed_calls)} replayed, {len(divergences)} divergent")
    console.print(f"patch.diff: {'[green]identical[/]' if identical_patch else '[red]differs[/]'}")
    console.print(f"status: {safe(record.status).markup} (recorded: {safe(recorded_status).markup})" + ("" if same_status else " [red]differs[/]"))
    reproduced = identical_patch and not divergences and same_status
    console.print("[bold green]reproduced exactly[/]" if reproduced else "[bold red]the replay diverged from the recording[/]")
    console.print(f"outputs: {out / 'patch.diff'} · {out / 'run.json'} · {out / 'trajectory.jsonl'} · {out / 'replay.json'}", markup=False)

    if record.status in ("sandbox_error", "interrupted") or (record.status == "model_error" and not ran_out):
        return record.exit_code  # the replay itself could not run: as for `airlock run`
    return 0 if reproduced else 1
