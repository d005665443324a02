"""The agent loop: ask the model, run the tools it calls in the sandbox, answer, repeat.

Model errors, sandbox errors and Ctrl-C propagate to the runner, which still exports the patch;
`steps` and `tool_calls` stay readable on the agent after any of them.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from orchestrator.conversation import END_TURN, MAX_TOKENS, TOOL_USE, Message, Part, Reply, Text, ToolCall, ToolResult
from orchestrator.errors import ModelError
from orchestrator.policy.guard import PolicyGuard
from orchestrator.providers.base import ContextOverflow, Provider
from orchestrator.run.context import ContextWindow, Trim
from orchestrator.run.trace import Trace
from orchestrator.run.trajectory import Trajectory
from orchestrator.sandbox.channel import ToolReply
from orchestrator.tool_specs import ToolInputError, tool_schemas, validate_call

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

# How the loop itself can end; errors and Ctrl-C propagate instead.
Stop = Literal["completed", "max_steps", "timeout", "budget_exceeded"]
CUT_OFF = "Your previous reply was cut off by the output token limit. Continue where you left off."
TOOL_TIMEOUT_GRACE_S = 15.0


class Tools(Protocol):
    """Where tool calls go: the sandbox's tool server (orchestrator.sandbox.channel.ToolChannel)."""

    def call(self, tool: str, args: dict[str, Any], timeout: float) -> ToolReply: ...


@dataclass(frozen=True)
class Limits:
    max_steps: int
    command_timeout: float
    deadline: float  # time.monotonic() value at which the run's wall clock is up
    context_window: int  # tokens
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
        self, provider: Provider, channel: Tools, limits: Limits, trace: Trace, trajectory: Trajectory, guard: PolicyGuard, *, sandbox_notes: str = ""
    ) -> None:  # fmt: skip
        """`sandbox_notes`: what the model should know about its sandbox (the history it has, files withheld)."""
        self.provider, self.channel, self.limits, self.guard = provider, channel, limits, guard
        self.trace, self.trajectory = trace, trajectory
        self.system = SYSTEM_PROMPT + (f"\n\nAbout this sandbox:\n{sandbox_notes}" if sandbox_notes else "")
        self.context = ContextWindow(limits.context_window, fixed_chars=len(self.system) + len(json.dumps(tool_schemas())))
        self.steps = 0
        self.tool_calls = 0
        self.final_text = ""

    def run(self, task: str) -> Stop:
        """Run until the model ends its turn or a limit is reached; returns the run status.

        Limits are checked between steps, so a step's tool calls are always answered before the run stops."""
        messages = [Message(role="user", content=[Text(text=task)])]
        recorded = 0
        while self.steps < self.limits.max_steps:
            if self.limits.deadline <= time.monotonic():
                return "timeout"
            if self.guard.budget_exceeded(self.provider.usage):
                return "budget_exceeded"
            self.steps += 1
            self._record_trim(self.context.trim_if_near(messages))
            self.trajectory.write("model_request", step=self.steps, model=self.provider.model, new_messages=_dump(messages[recorded:]))
            recorded = len(messages)
            try:
                reply = self._ask(messages)
            except TimeoutError:
                return "timeout"
            messages.append(reply.message)
            self.final_text = reply.message.text or self.final_text
            self.trace.model_turn(self.steps, reply.message)
            if reply.stop_reason == END_TURN:
                return "completed"
            if reply.stop_reason not in (TOOL_USE, MAX_TOKENS):
                raise ModelError(f"the model stopped with stop_reason {reply.stop_reason!r}")
            messages.append(self._answer(reply.message, cut_off=reply.stop_reason == MAX_TOKENS))
        return "max_steps"

    def _ask(self, messages: list[Message]) -> Reply:
        """One model turn, recorded; a request the API finds too long is trimmed and sent again while trimming helps."""
        while True:
            started = time.monotonic()
            try:
                reply = self.provider.complete(self.system, messages, timeout=max(0.001, self.limits.deadline - started))
                break
            except ContextOverflow as exc:
                trim = self.context.trim_after_overflow(messages, exc.window, exc.prompt_tokens)
                if trim is None:
                    raise
                self._record_trim(trim)
        self.context.observe(reply.usage, messages)
        self.trajectory.write(
            "model_response", step=self.steps, duration_s=round(time.monotonic() - started, 3), stop_reason=reply.stop_reason,
            usage=reply.usage.model_dump() if reply.usage else None, message=_dump([reply.message])[0], notes=reply.notes, response=reply.raw,
        )  # fmt: skip
        for note in reply.notes:
            self.trace.note(note)
        return reply

    def _record_trim(self, trim: Trim | None) -> None:
        if trim is not None:
            self.trajectory.write("context_trimmed", step=self.steps, **asdict(trim))
            self.trace.note(
                f"context trimmed ({trim.reason}): {len(trim.stubbed)} old tool results replaced by a stub, ~{trim.tokens_before:,} → ~{trim.tokens_after:,} tokens"
            )

    def _answer(self, message: Message, *, cut_off: bool) -> Message:
        """One result per tool call, in order; a cut-off turn's last call may be incomplete and is not run."""
        calls = message.tool_calls
        truncated = calls[-1].id if cut_off and calls and message.content[-1] is calls[-1] else None
        answer: list[Part] = [self._run_tool(call, runnable=call.id != truncated) for call in calls]
        if cut_off:
            answer.append(Text(text=CUT_OFF))
        return Message(role="user", content=answer)

    def _run_tool(self, call: ToolCall, *, runnable: bool) -> ToolResult:
        self.tool_calls += 1
        self.trace.tool_call(call.name, call.arguments if call.problem is None else call.raw_arguments)
        started = time.monotonic()
        meta: dict[str, Any] = {}
        try:
            if not runnable:
                raise ToolInputError("Not run: your reply was cut off before this tool call was complete. Send it again.")
            if call.problem is not None:
                raise ToolInputError(f"Not run: {call.problem}")
            args = validate_call(call.name, call.arguments)
            if refusal := self.guard.refuse_tool_call(call.name, args):
                raise ToolInputError(refusal)
            timeout = max(1.0, min(args.get("timeout", self.limits.command_timeout), self.limits.deadline - time.monotonic()))
            if call.name == "run_bash":
                args["timeout"] = timeout
            reply = self.channel.call(call.name, args, timeout=timeout + TOOL_TIMEOUT_GRACE_S)
            output, is_error, meta = reply.output, reply.is_error, reply.meta
        except ToolInputError as exc:
            output, is_error = str(exc), True
        output = cap_text(output, self.limits.max_result_chars) or "(no output)"
        duration = round(time.monotonic() - started, 3)
        recorded_input = call.arguments if call.problem is None else call.raw_arguments
        self.trajectory.write(
            "tool_call", step=self.steps, id=call.id, name=call.name, input=recorded_input,
            output=output, is_error=is_error, meta=meta, duration_s=duration,
        )  # fmt: skip
        self.trace.tool_result(output, is_error, meta)
        return ToolResult(call_id=call.id, output=output, is_error=is_error)


def _dump(messages: list[Message]) -> list[dict[str, Any]]:
    return [message.model_dump(mode="json", exclude_none=True) for message in messages]
