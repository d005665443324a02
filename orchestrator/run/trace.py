"""The live terminal trace of a run: plan text, tool calls, short results, and a final summary line."""

from __future__ import annotations

import json
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.text import Text

from orchestrator.conversation import Message
from orchestrator.run.record import RunRecord
from orchestrator.sizes import human_size, plural
from orchestrator.terminal import safe

PREVIEW_LINES = 4
PREVIEW_WIDTH = 160
STATUS_STYLE = {"completed": "bold green", "interrupted": "bold yellow"}
HIDDEN_EXAMPLES = 3
VERIFY_LINES = 6


def _preview(text: str) -> list[str]:
    lines = text.rstrip("\n").splitlines()
    shown = lines if len(lines) <= PREVIEW_LINES else [*lines[: PREVIEW_LINES - 1], f"… ({len(lines) - PREVIEW_LINES + 1} more lines)", lines[-1]]
    return [line if len(line) <= PREVIEW_WIDTH else line[:PREVIEW_WIDTH] + "…" for line in shown]


def _call_summary(name: str, args: Any) -> str:
    if isinstance(args, dict):
        for key in ("command", "path", "pattern"):
            if isinstance(args.get(key), str):
                return args[key].replace("\n", " ⏎ ")[:PREVIEW_WIDTH]
    return json.dumps(args, ensure_ascii=False)[:PREVIEW_WIDTH]


class Trace:
    def __init__(self, console: Console) -> None:
        self.console = console
        # Load rich's character-width table now: imported lazily, mid-run, a Ctrl-C handler that prints
        # would import it a second time while the first import is still under way.
        cell_len("■ · … ▶ │ ⚠ ⏎")

    def header(self, record: RunRecord, banner: str | None = None) -> None:
        if banner:
            self.console.print(Text(f" {banner} ", style="bold black on yellow"))
        box = record.sandbox
        via = "" if record.provider == "anthropic" else f" via {record.provider}"
        self.console.print(f"[bold]airlock run[/] [cyan]{record.run_id}[/]  repo {safe(record.repo).markup}  model {safe(record.model + via).markup}")
        self.console.print(
            f"[dim]sandbox {safe(box['image']).markup} · cpus {box['cpus']} · memory {human_size(box['memory'])} · "
            f"disk {human_size(box['disk'])} · pids {box['pids_limit']} · network {box['network']}[/]"
        )

    def hidden(self, paths: list[str]) -> None:
        """The paths the policy kept out of the sandbox: a missing test fixture is then no mystery."""
        if paths:
            shown = ", ".join(paths[:HIDDEN_EXAMPLES]) + (", …" if len(paths) > HIDDEN_EXAMPLES else "")
            self.console.print(Text(f"hidden by policy: {plural(len(paths), 'path')} not copied into the sandbox, e.g. {shown}", style="yellow"))

    def note(self, message: str) -> None:
        self.console.print(safe(message, "dim"))

    def policy_event(self, message: str) -> None:
        self.console.print(safe(f"⚠ {message}", "bold yellow"))

    # One print per event, of ready-made Text: each rich print costs a fraction of a millisecond, and a
    # step's bookkeeping is meant to cost a few milliseconds in all.
    def model_turn(self, step: int, message: Message, *, replayed: bool = False) -> None:
        title = f"── step {step}{' · replayed from the recording' if replayed else ''} "
        line = Text(title + "─" * max(0, self.console.width - len(title)), style="dim")
        if message.text.strip():
            line.append("\n")
            line.append_text(safe(message.text.strip(), "italic"))
        self.console.print(line)

    def tool_call(self, name: str, args: Any) -> None:
        self.console.print(Text.assemble(safe(f"▶ {name}", "bold blue"), " ", safe(_call_summary(name, args))))

    def tool_result(self, output: str, is_error: bool, meta: dict[str, Any]) -> None:
        lines = [f"  │ {line}" for line in _preview(output)]
        if lines:
            self.console.print(safe("\n".join(lines), "red" if is_error else "dim"))

    def summary(self, record: RunRecord) -> None:
        usage, patch = record.usage, record.patch
        tokens = (
            f"tokens in {usage.input_tokens:,} · cache read {usage.cache_read_input_tokens:,} · "
            f"cache write {usage.cache_creation_input_tokens:,} · out {usage.output_tokens:,}"
        )
        change = f"{plural(patch.files_changed, 'file')} changed, +{patch.insertions} -{patch.deletions}"
        cost = "cost unknown" if record.cost_usd is None else f"${record.cost_usd:.4f}"
        style = STATUS_STYLE.get(record.status, "bold red")
        self.console.print(
            f"[{style}]■ {record.status}[/] · {plural(record.steps, 'step')} · {plural(record.tool_calls, 'tool call')} · {tokens} · {cost} · {change} · "
            f"{record.duration_s:.1f} s"
        )
        if record.verify is not None:
            verify = record.verify
            verdict = verify.skipped or ("passed" if verify.passed else f"failed (exit {verify.exit_code})")
            self.console.print(f"verify [bold]{safe(verify.command).markup}[/]: {safe(verdict).markup}")
            if not verify.passed and not verify.skipped:  # why it failed: the end of its output (127: command not found, ...)
                lines = [line for line in verify.output_tail.rstrip().splitlines() if not line.startswith(("[exit code:", "[timed out after"))]
                if lines:
                    self.console.print(safe("\n".join(f"  │ {line[:PREVIEW_WIDTH]}" for line in lines[-VERIFY_LINES:]), "red"))
        if record.error:
            self.console.print("[red]error:[/]", safe(record.error))
