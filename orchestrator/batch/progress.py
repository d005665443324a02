"""What a batch shows while it runs: a live board on a terminal, plain timestamped log lines elsewhere (CI logs).

The scheduler hands over an `Overview` (numbers only), so this module knows nothing of processes or files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from orchestrator.terminal import safe


@dataclass
class Row:
    """One task in progress."""

    id: str
    state: str  # cloning or running
    step: int
    activity: str
    elapsed: float
    tokens: int
    cost: float | None


@dataclass
class Overview:
    total: int
    finished: int = 0  # ended in this invocation, whatever the status
    failed: int = 0  # of those, not completed
    skipped: int = 0  # finished earlier
    running: int = 0
    queued: int = 0
    not_started: int = 0
    elapsed: float = 0.0
    eta: float | None = None
    tokens: int = 0
    cost: float = 0.0  # the known part
    cost_unknown: bool = False  # some task's price is unknown: cost is a lower bound
    backoff: float = 0.0  # seconds left of the shared 429 backoff
    notice: str | None = None  # e.g. the budget was reached
    rows: list[Row] = field(default_factory=list)


def money(cost: float | None, unknown: bool = False) -> str:
    if cost is None:
        return "cost unknown"
    return f"${cost:.4f}" + (" + unknown" if unknown else "")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def counts(view: Overview) -> str:
    done = view.finished + view.skipped
    parts = [f"{done}/{view.total} done"]
    if view.failed:
        parts.append(f"{view.failed} failed")
    if view.skipped:
        parts.append(f"{view.skipped} skipped")
    parts += [f"{view.running} running", f"{view.queued} queued"]
    if view.not_started:
        parts.append(f"{view.not_started} not started")
    return ", ".join(parts)


def spending(view: Overview) -> str:
    eta = f" · ETA {duration(view.eta)}" if view.eta is not None and view.queued + view.running else ""
    return f"{view.tokens:,} tokens · {money(view.cost, view.cost_unknown)} · {duration(view.elapsed)} elapsed{eta}"


def summary_line(view: Overview) -> str:
    return f"{counts(view)} · {spending(view)}"


class BatchDisplay:
    """`live`: a board redrawn in place (a terminal); otherwise every event is one plain line."""

    def __init__(self, console: Console, *, live: bool) -> None:
        self.console = console
        self.live = live
        self._live: Live | None = None

    def __enter__(self) -> BatchDisplay:
        if self.live:
            self._live = Live(console=self.console, refresh_per_second=4, transient=True, redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def log(self, message: str) -> None:
        """A line that stays: above the board on a terminal, a log line otherwise."""
        self.console.print(f"[dim]\\[{time.strftime('%H:%M:%S')}][/] {message}", soft_wrap=not self.live, highlight=False)

    def step(self, task_id: str, step: int) -> None:
        if not self.live:  # the board shows steps in place; a log gets one line each
            self.log(f"{safe(task_id).markup} step {step}")

    def progress(self, view: Overview) -> None:
        """After a task ends: the overall line in a log (the board keeps it on screen anyway)."""
        if not self.live:
            self.log(f"progress: {summary_line(view)}")

    def update(self, view: Overview) -> None:
        if self._live is not None:
            self._live.update(self.board(view))

    def board(self, view: Overview) -> Group:
        bar = Table.grid(padding=(0, 2))
        bar.add_row(ProgressBar(total=max(view.total, 1), completed=view.finished + view.skipped, width=40), spending(view))
        parts: list[object] = [Text.assemble(("airlock batch  ", "bold"), counts(view)), bar]
        if view.backoff > 0:
            parts.append(Text(f"rate limited by the API: every task waits {view.backoff:.0f} s", style="yellow"))
        if view.notice:
            parts.append(safe(view.notice, "yellow"))
        if view.rows:
            table = Table(box=None, pad_edge=False, show_header=True, header_style="dim")
            for column, justify in (("task", "left"), ("step", "right"), ("doing", "left"), ("time", "right"), ("tokens", "right"), ("cost", "right")):
                table.add_column(column, justify=justify)  # type: ignore[arg-type]
            for row in view.rows:
                step = "clone" if row.state == "cloning" else str(row.step or "–")
                table.add_row(safe(row.id), step, safe(row.activity[:50]), duration(row.elapsed), f"{row.tokens:,}", money(row.cost))
            parts.append(table)
        return Group(*parts)  # type: ignore[arg-type]
