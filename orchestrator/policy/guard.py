"""Enforcing a policy during a run: tool calls, budget, and the exported patch; every hit is recorded.

Command lists are checked here on the host before a command reaches the sandbox. They are a second
layer (an interpreter such as `python -c` runs anything); the container is the boundary.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from orchestrator.conversation import Usage
from orchestrator.errors import UsageError
from orchestrator.globs import path_matches
from orchestrator.patch.check import FileChange
from orchestrator.policy.commands import check_command
from orchestrator.policy.model import Policy
from orchestrator.policy.pricing import cost_usd, price_for, total_input_tokens

WORKSPACE = "/workspace"
WRITING_TOOLS = ("write_file", "edit_file")


def repo_relative(path: str) -> str | None:
    """The repo-relative form of a tool's path argument, or None when it points outside the repo."""
    absolute = posixpath.normpath(posixpath.join(WORKSPACE, path))
    if absolute == WORKSPACE:
        return ""
    if not absolute.startswith(WORKSPACE + "/"):
        return None
    return absolute[len(WORKSPACE) + 1 :]


class PolicyGuard:
    def __init__(self, policy: Policy, model: str, notify: Callable[[str], None] = lambda message: None, stop_file: Path | None = None) -> None:
        """`stop_file`: the batch's budget, shared by its runs (`airlock batch --max-total-cost`); see budget_exceeded."""
        self.policy = policy
        self.stop_file = stop_file
        self.price = price_for(model, policy.budget.prices)
        if policy.budget.max_cost_usd is not None and self.price is None:
            raise UsageError(
                f"the policy sets a cost budget but airlock has no price for model {model!r}: "
                f'add [budget.prices."{model}"] with input, output, cache_write and cache_read (USD per million tokens)'
            )
        self.events: list[dict[str, Any]] = []
        self._notify = notify
        self._start = time.monotonic()

    def record(self, rule: str, detail: str) -> None:
        event = {
            "rule": rule,
            "detail": detail,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "t": round(time.monotonic() - self._start, 3),
        }
        self.events.append(event)
        self._notify(f"policy {rule}: {detail}")

    def refuse_tool_call(self, name: str, args: dict[str, Any]) -> str | None:
        """The refusal to return to the model as a tool error, or None to let the call through."""
        refusal = None
        if name == "run_bash":
            commands = self.policy.commands
            refusal = check_command(args["command"], commands.allow, commands.deny)
            rule = "commands"
        elif name in WRITING_TOOLS:
            rule = "paths.protected"
            path = repo_relative(args["path"])
            pattern = path_matches(path, self.policy.paths.protected) if path else None
            if pattern:
                refusal = f"refused by policy [paths] protected rule {pattern!r}: {path} may be read but not changed"
        if refusal:
            self.record(rule, refusal)
        return refusal

    def cost(self, usage: Usage) -> float | None:
        return cost_usd(usage, self.price)

    def budget_exceeded(self, usage: Usage) -> str | None:
        """Which budget the run has used up, if any (checked between steps).

        A batch's total cost budget spans processes, so its scheduler says "stop" by creating the stop
        file (holding the reason); this run then stops like on its own budget."""
        if self.stop_file is not None and self.stop_file.exists():
            batch_reason = read_stop_request(self.stop_file) or "the batch reached its total cost budget (--max-total-cost)"
            self.record("batch.max_total_cost", batch_reason)
            return batch_reason
        budget = self.policy.budget
        spent_input = total_input_tokens(usage)
        cost = self.cost(usage)
        reason = None
        if budget.max_input_tokens is not None and spent_input >= budget.max_input_tokens:
            reason = f"input tokens {spent_input:,} reached the budget of {budget.max_input_tokens:,}"
        elif budget.max_output_tokens is not None and usage.output_tokens >= budget.max_output_tokens:
            reason = f"output tokens {usage.output_tokens:,} reached the budget of {budget.max_output_tokens:,}"
        elif budget.max_cost_usd is not None and cost is not None and cost >= budget.max_cost_usd:
            reason = f"cost ${cost:.4f} reached the budget of ${budget.max_cost_usd:.2f}"
        if reason:
            self.record("budget", reason)
        return reason

    def refuse_change(self, change: FileChange) -> str | None:
        """Drop a change to a protected or hidden path from the patch, however it was made."""
        paths = self.policy.paths
        for path in {path for path in (change.old_path, change.new_path) if path is not None}:
            for section, patterns in (("protected", paths.protected), ("hidden", paths.hidden)):
                if pattern := path_matches(path, patterns):
                    reason = f"policy [paths] {section} rule {pattern!r}: the change to {path} is not exported"
                    self.record(f"paths.{section}", reason)
                    return reason
        return None


def request_stop(path: Path, reason: str) -> None:
    """Ask the run whose stop file is `path` to stop after its current step (its guard checks between steps)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(reason, encoding="utf-8")
    tmp.replace(path)  # the run never reads a half-written reason


def read_stop_request(path: Path) -> str:
    """The reason written by request_stop ("" when there is none to read)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()[:500]
    except OSError:
        return ""
