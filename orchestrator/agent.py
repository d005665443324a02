"""The agent loop: ask the model, run the tools it calls in the sandbox, answer, repeat.

Model errors, sandbox errors and Ctrl-C propagate to the runner, which still exports the patch;
`steps` and `tool_calls` stay readable on the agent after any of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from orchestrator.channel import ToolChannel
from orchestrator.errors import ModelError
from orchestrator.model import AnthropicModel
from orchestrator.policy_guard import PolicyGuard
from orchestrator.tool_specs import ToolInputError, tool_definitions, validate_call
from orchestrator.trace import Trace
from orchestrator.trajectory import Trajectory

SYSTEM_PROMPT = """\
You are a careful software engineer working on a task in a repository.
You work through tools that act on a private copy of the repository inside an isolated sandbox:
there is no network access and nobody can answer questions, so work autonomously to the end.

How to work:
- Explore before changing anything: list folders, search, read the relevant code and tests.
- Reproduce a reported problem (run the tests or a small script) before fixing it.
- Make focused, minimal changes with edit_file; keep the project's style; do not reformat unrelated code.
- Verify your change by running the relevant tests. Do not weaken or delete tests to make them pass.
- Do not commit: your changes to the files are collected automatically when you finish.
- When the task is done, reply with a short summary of what you changed and why, without calling a tool."""

CUT_OFF = "Your previous reply was cut off by the output token limit. Continue where you left off."
TOOL_TIMEOUT_GRACE_S = 15.0


@dataclass(frozen=True)
class Limits:
    max_steps: int
    command_timeout: float
    deadline: float  # time.monotonic() value at which the run's wall clock is up
    max_result_chars: int = 50_000


def cap_text(text: str, limit: int) -> str:
    """Keep the head and tail of an over-long tool result, saying what was dropped and how to see it."""
    if len(text) <= limit:
        return text
    half = limit // 2
    dropped = len(text) - 2 * half
    marker = f"\n[... {dropped} characters dropped; use line ranges, grep, head or tail to see them ...]\n"
    return text[:half] + marker + text[-half:]


class Agent:
    def __init__(
        self, model: AnthropicModel, channel: ToolChannel, limits: Limits, trace: Trace, trajectory: Trajectory, guard: PolicyGuard
    ) -> None:
        self.model, self.channel, self.limits, self.guard = model, channel, limits, guard
        self.trace, self.trajectory = trace, trajectory
        self.tools = tool_definitions()
        self.steps = 0
        self.tool_calls = 0
        self.final_text = ""

    def run(self, task: str) -> str:
        """Run until the model ends its turn or a limit is reached; returns the run status.

        Limits are checked between steps, so a step's tool calls are always answered before the run stops."""
        messages: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "text", "text": task}]}]
        recorded = 0
        while self.steps < self.limits.max_steps:
            remaining = self.limits.deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            if self.guard.budget_exceeded(self.model.usage):
                return "budget_exceeded"
            self.steps += 1
            body = self.model.request(SYSTEM_PROMPT, self.tools, messages)
            self.trajectory.write("model_request", step=self.steps, model=body["model"], new_messages=messages[recorded:])
            recorded = len(messages)
            started = time.monotonic()
            try:
                response = self.model.complete(body, timeout=remaining)
            except TimeoutError:
                return "timeout"
            self.trajectory.write(
                "model_response", step=self.steps, duration_s=round(time.monotonic() - started, 3), response=response.model_dump(mode="json")
            )
            content = [block.model_dump(mode="json", exclude_none=True) for block in response.content]
            messages.append({"role": "assistant", "content": content})
            self.final_text = "\n".join(b["text"] for b in content if b["type"] == "text") or self.final_text
            self.trace.model_turn(self.steps, content)
            if response.stop_reason == "end_turn":
                return "completed"
            if response.stop_reason not in ("tool_use", "max_tokens"):
                raise ModelError(f"the model stopped with stop_reason {response.stop_reason!r}")
            messages.append({"role": "user", "content": self._answer(content, cut_off=response.stop_reason == "max_tokens")})
        return "max_steps"

    def _answer(self, content: list[dict[str, Any]], *, cut_off: bool) -> list[dict[str, Any]]:
        """One tool_result per tool_use block, in order; a cut-off turn's last call may be incomplete and is not run."""
        calls = [block for block in content if block["type"] == "tool_use"]
        truncated = calls[-1]["id"] if cut_off and calls and content[-1] is calls[-1] else None
        answer = [self._run_tool(call, runnable=call["id"] != truncated) for call in calls]
        if cut_off:
            answer.append({"type": "text", "text": CUT_OFF})
        return answer

    def _run_tool(self, call: dict[str, Any], *, runnable: bool) -> dict[str, Any]:
        self.tool_calls += 1
        self.trace.tool_call(call["name"], call["input"])
        started = time.monotonic()
        meta: dict[str, Any] = {}
        try:
            if not runnable:
                raise ToolInputError("Not run: your reply was cut off before this tool call was complete. Send it again.")
            args = validate_call(call["name"], call["input"])
            if refusal := self.guard.refuse_tool_call(call["name"], args):
                raise ToolInputError(refusal)
            timeout = max(1.0, min(args.get("timeout", self.limits.command_timeout), self.limits.deadline - time.monotonic()))
            if call["name"] == "run_bash":
                args["timeout"] = timeout
            reply = self.channel.call(call["name"], args, timeout=timeout + TOOL_TIMEOUT_GRACE_S)
            output, is_error, meta = reply.output, reply.is_error, reply.meta
        except ToolInputError as exc:
            output, is_error = str(exc), True
        output = cap_text(output, self.limits.max_result_chars) or "(no output)"
        duration = round(time.monotonic() - started, 3)
        self.trajectory.write(
            "tool_call", step=self.steps, id=call["id"], name=call["name"], input=call["input"],
            output=output, is_error=is_error, meta=meta, duration_s=duration,
        )  # fmt: skip
        self.trace.tool_result(output, is_error, meta)
        return {"type": "tool_result", "tool_use_id": call["id"], "content": output, "is_error": is_error}
