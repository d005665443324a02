"""`airlock show DIR`: one run on the terminal, for a quick review without a browser.

Header (status, model, steps, tokens, cost, duration, verify), what needs attention, diffstat,
the coloured diff and a condensed trajectory. Every string from the run is the agent's: it is
printed as rich `Text` (never parsed as markup) with each control, invisible or bidirectional
character shown as a red escape, so nothing it holds can move the cursor, recolour the terminal or
reorder what a reviewer reads.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.errors import UsageError
from orchestrator.review.data import RunData, Step, ToolCall, is_run_folder, load_run, model_label
from orchestrator.review.diff import FileDiff
from orchestrator.sizes import plural
from orchestrator.terminal import safe

STATUS_STYLE = {"completed": "bold green", "running": "bold blue", "interrupted": "bold yellow", "max_steps": "bold yellow",
                "timeout": "bold yellow", "budget_exceeded": "bold yellow", "stuck": "bold yellow"}  # fmt: skip
SEVERITY_STYLE = {"danger": ("✖", "bold red"), "attention": ("⚠", "bold yellow"), "note": ("·", "dim")}
LINE_STYLE = {"add": "green", "del": "red", "hunk": "cyan", "nonl": "dim italic", "raw": "magenta", "context": ""}
TASK_LINES = 6
VERIFY_LINES = 8


def load_single_run(path: Path) -> RunData:
    if not path.is_dir():
        raise UsageError(f"{path} is not a folder")
    if not is_run_folder(path):
        runs = sorted(p for p in path.iterdir() if is_run_folder(p))
        if runs:
            raise UsageError(f"{path} holds {plural(len(runs), 'run')}: pass one of them (e.g. {runs[0]}), or see them all with `airlock review {path}`")
        raise UsageError(f"no run in {path}: expected run.json, patch.diff or trajectory.jsonl")
    return load_run(path)


def join(*parts: Text | str) -> Text:
    """Concatenate, each part keeping its own style (`Text + Text` would spread the first part's style)."""
    out = Text()
    for part in parts:
        out.append(part)
    return out


def name(path: str | None, style: str = "") -> Text:
    return safe(path, style, keep="")


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def render_run(run: RunData, console: Console, *, max_lines: int = 200) -> None:
    _header(run, console)
    _attempts(run, console)
    _flags(run, console)
    _diffstat(run, console)
    _diff(run, console, max_lines)
    _trajectory(run, console)


def _header(run: RunData, console: Console) -> None:
    s, u = run.summary, run.summary.usage
    status = "partial (running)" if s.status == "running" else s.status
    title = join(Text("airlock show ", style="bold"), name(run.name, "bold cyan"), "  ", Text(f"■ {status}", style=STATUS_STYLE.get(s.status, "bold red")))
    console.print(title)
    facts = join(Text("model ", style="dim"), safe(model_label(s) or "—"), Text("  run ", style="dim"), safe(s.run_id or "—"))
    console.print(facts)
    cost = "cost unknown" if s.cost_usd is None else f"${s.cost_usd:.4f}"
    duration = "—" if not s.duration_s else f"{s.duration_s:.1f} s"
    console.print(
        f"{plural(s.steps, 'step')} · {plural(s.tool_calls, 'tool call')} · tokens in {u.input_tokens:,} · cache read {u.cache_read_input_tokens:,} · "
        f"cache write {u.cache_creation_input_tokens:,} · out {u.output_tokens:,} · {cost} · {duration}",
        markup=False,
    )
    task_lines = s.task.strip().splitlines() or ["(no task recorded)"]
    console.print(join(Text("task   ", style="bold"), safe("\n       ".join(task_lines[:TASK_LINES]))))
    if len(task_lines) > TASK_LINES:
        console.print(f"      … {len(task_lines) - TASK_LINES} more lines", style="dim")
    if s.setup is not None:
        first, *rest = s.setup.lines()
        console.print(join(Text("setup  ", style="bold"), safe(first)))
        for line in rest:
            console.print(join(Text("  │ ", style="dim"), safe(line, "dim")))
    if s.verify is not None:
        verify = s.verify
        if verify.skipped:
            verdict = Text(f"skipped: {verify.skipped}", style="dim")
        elif verify.passed:
            verdict = Text("✓ passed", style="bold green")
        elif verify.exit_code is None:
            verdict = Text("not run", style="dim")
        else:
            verdict = Text(f"✗ failed (exit {verify.exit_code})", style="bold red")
        console.print(join(Text("verify ", style="bold"), safe(verify.command), "  ", verdict))
        if not verify.passed and verify.output_tail.strip():
            for line in verify.output_tail.rstrip().splitlines()[-VERIFY_LINES:]:
                console.print(join(Text("  │ ", style="dim"), safe(line, "dim")))
    if s.error:
        console.print(join(Text("error  ", style="bold red"), safe(s.error)))
    for problem in run.problems:
        console.print(join(Text("note   ", style="yellow"), safe(problem)))


def _attempts(run: RunData, console: Console) -> None:
    """A run of several attempts: each in a line, the chosen one first."""
    for attempt in run.attempts:
        verdict = "" if attempt.verify is None else (" · verify passed" if attempt.verify else " · verify failed")
        change = f"+{attempt.run.insertions} -{attempt.run.deletions}" if attempt.run is not None else (attempt.note or "did not run")
        line = f"attempt {attempt.number}{' (chosen)' if attempt.chosen else ''}: {attempt.status}{verdict} · {change} · {plural(attempt.steps, 'step')}"
        console.print(join(Text("try    ", style="bold"), safe(line), Text(f"  {attempt.run.folder}" if attempt.run else "", style="dim")))


def _flags(run: RunData, console: Console) -> None:
    flags = run.all_flags
    important = [f for f in flags if f.severity != "note"]
    console.rule(Text(f"needs attention ({len(important)})" if important else "nothing needs special attention", style="bold"), style="dim")
    for flag in flags:
        icon, style = SEVERITY_STYLE[flag.severity]
        line = join(Text(f"{icon} {flag.severity:<9} ", style=style))
        if flag.path is not None:
            line = join(line, name(flag.path, "bold"), " — ")
        console.print(join(line, safe(flag.message)))


def _diffstat(run: RunData, console: Console) -> None:
    source = "" if run.diff_source in (None, "patch.diff") else f" (from {run.diff_source})"
    console.rule(Text(f"{plural(run.files_changed, 'file')} changed, +{run.insertions} -{run.deletions}{source}", style="bold"), style="dim")
    if run.diff_source is None:
        console.print("no patch file in this run folder", style="dim")
        return
    if not run.diffs:
        console.print("no change", style="dim")
        return
    table = Table(show_header=False, box=None, padding=(0, 1), pad_edge=False)
    table.add_column(style="dim")
    table.add_column(overflow="fold")
    table.add_column(justify="right", no_wrap=True)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    widest = max((d.insertions + d.deletions for d in run.diffs), default=1) or 1
    for diff in run.diffs:
        scale = min(1.0, 30 / widest)
        bar = join(Text("+" * round(diff.insertions * scale), style="green"), Text("-" * round(diff.deletions * scale), style="red"))
        codes = Text(" ".join(dict.fromkeys(f.code for f in diff.flags if f.severity != "note")), style="yellow")
        table.add_row(diff.kind, _path(diff), f"+{diff.insertions} -{diff.deletions}", bar, codes)
    console.print(table)


def _path(diff: FileDiff) -> Text:
    change = diff.change
    if change is None:
        return name(diff.label, "bold")
    if change.kind in ("renamed", "copied") and change.old_path != change.new_path:
        return join(name(change.old_path), Text(" → ", style="dim"), name(change.new_path))
    return name(change.path)


def _diff(run: RunData, console: Console, max_lines: int) -> None:
    for diff in run.diffs:
        console.rule(_path(diff), style="dim", align="left")
        change = diff.change
        if change is not None and change.old_mode and change.new_mode and change.old_mode != change.new_mode:
            console.print(f"mode {change.old_mode} → {change.new_mode}", style="yellow")
        if change is not None and change.binary and diff.lines:
            console.print("binary file, shown decoded (control bytes escaped):", style="yellow")
        width = len(str(max([line.old or 0 for line in diff.lines] + [line.new or 0 for line in diff.lines] + [1])))
        for line in diff.lines[:max_lines]:
            style = LINE_STYLE[line.kind]
            numbers = f"{line.old or '':>{width}} {line.new or '':>{width}} " if line.kind in ("context", "add", "del") else " " * (2 * width + 2)
            tag = {"add": "+", "del": "-", "context": " "}.get(line.kind, "")
            text = line.text.removesuffix("\r")
            row = join(Text(numbers, style="dim"), Text(tag, style=style), safe(text, style, keep="\t"))
            if line.text.endswith("\r"):
                row.append("␍", style="dim")
            if line.cut:
                row.append(f" … {line.cut:,} more characters", style="dim")
            console.print(row)
        hidden = max(0, len(diff.lines) - max_lines) + diff.hidden_lines
        if hidden:
            console.print(f"… {hidden:,} more lines: see {run.folder / (run.diff_source or 'patch.diff')}", style="dim", markup=False)


def _trajectory(run: RunData, console: Console) -> None:
    traj = run.trajectory
    console.rule(Text(f"trajectory: {plural(len(traj.steps), 'step')}", style="bold"), style="dim")
    if not traj.present:
        console.print("no trajectory.jsonl in this run folder", style="dim")
        return
    for step in traj.steps:
        _step(step, console)
    for error in traj.errors:
        console.print(join(Text("! internal error: ", style="bold red"), safe(error.strip().splitlines()[-1] if error.strip() else "")))
    if traj.ended:
        end = Text(f"■ run ended: {traj.end_status}", style=STATUS_STYLE.get(traj.end_status or "", "bold red"))
        console.print(join(end, " — ", safe(traj.end_error)) if traj.end_error else end)
    else:
        console.print("… no end recorded: the run was killed or is still going", style="yellow")


def _step(step: Step, console: Console) -> None:
    line = join(Text(f"{step.number:>3} ", style="bold"), safe(_first_line(step.text), "italic") if step.text else Text("(no text)", style="dim"))
    console.print(line)
    for note in step.notes:
        console.print(join(Text("    · ", style="dim"), safe(note, "dim")))
    for call in step.tool_calls:
        _call(call, console)


def _call(call: ToolCall, console: Console) -> None:
    args = call.input if isinstance(call.input, dict) else {}
    summary = next((args[k] for k in ("command", "path", "pattern") if isinstance(args.get(k), str)), "")
    summary = summary.split("\n", 1)[0][:160]
    result = _first_line(call.output)[:160]
    status = f" (exit {call.exit_code})" if call.exit_code is not None else " (error)" if call.is_error else ""
    failed = call.is_error or (call.exit_code or 0) != 0
    line = join(Text("    ▶ ", style="blue"), safe(call.name, "bold blue"), " ", safe(summary), Text(" → ", style="dim"))
    line = join(line, safe(result, "red" if failed else "dim"), Text(status, style="red" if failed else "dim"))
    console.print(line)
