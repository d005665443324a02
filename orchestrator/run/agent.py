"""The agent loop: ask the model, run the tools it calls in the sandbox, answer, repeat.

Model errors, sandbox errors and Ctrl-C propagate to the runner, which still exports the patch;
`steps` and `tool_calls` stay readable on the agent after any of them.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from orchestrator.conversation import END_TURN, MAX_TOKENS, TOOL_USE, Message, Part, Reply, Text, ToolCall, ToolResult
from orchestrator.errors import ModelError
from orchestrator.policy.guard import PolicyGuard
from orchestrator.providers.base import ContextOverflow, Provider
from orchestrator.run.checkpoint import Replay
from orchestrator.run.context import ContextWindow, Trim
from orchestrator.run.trace import Trace
from orchestrator.run.trajectory import Trajectory
from orchestrator.sandbox.channel import ToolReply
from orchestrator.tokens import cap_text, cap_tokens
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
Stop = Literal["completed", "max_steps", "timeout", "budget_exceeded", "stuck"]
CUT_OFF = "Your previous reply was cut off by the output token limit. Continue where you left off."
UNREADABLE_CALL = (
    "Your reply looks like a tool call, but it could not be read: {problem}. To call a tool, use the tool-calling "
    'interface, or write one JSON object {{"name": "<tool>", "arguments": {{...}}}} naming one of the tools. '
    "If you are done, reply with a short summary and no tool call."
)
REPEATED_CALL = (
    "You have made the same {name} call {count} times in a row and got the same result each time: repeating it will not "
    "change anything. Do something different (read the file again, change the arguments, use another tool), or stop with "
    "a summary if you are done. The next identical call ends the run."
)
# Numbers that change between identical calls without meaning anything (pytest's "in 0.03s", timings).
_TIMINGS = re.compile(r"\d+\.\d+")
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
    max_reply_tokens: int = 16_000  # one reply
    max_repeated_calls: int = 3  # the same call with the same result this many times in a row: a nudge, then `stuck`


class Agent:
    def __init__(
        self, provider: Provider, channel: Tools, limits: Limits, trace: Trace, trajectory: Trajectory, guard: PolicyGuard, *,
        sandbox_notes: str = "", replay: Replay | None = None,
    ) -> None:  # fmt: skip
        """`sandbox_notes`: what the model should know about its sandbox (the history it has, files withheld);
        `replay`: the recorded steps a resumed or forked run starts with (orchestrator.run.checkpoint)."""
        self.provider, self.channel, self.limits, self.guard = provider, channel, limits, guard
        self.replay = replay
        self.trace, self.trajectory = trace, trajectory
        self.system = SYSTEM_PROMPT + (f"\n\nAbout this sandbox:\n{sandbox_notes}" if sandbox_notes else "")
        self.context = ContextWindow(limits.context_window, self.system + json.dumps(tool_schemas()), limits.max_reply_tokens)
        self.steps = 0
        self.tool_calls = 0
        self.final_text = ""
        self._noted: set[str] = set()  # adapter notes already shown on the terminal
        self._corrected = False  # the last reply was an unreadable call, and the model was told
        self._last_call: tuple[str, ...] | None = None  # the newest call and its result, as compared for repeats
        self._repeats = 0  # how many times in a row it was made
        self._nudged_at: int | None = None  # the repeat count at which the model was told it repeats itself

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
            if self.replay is not None and self.replay.then is not None and self.steps == self.replay.last + 1:
                messages.append(self._forked(messages[-1]) if messages[-1].role == "user" else Message(role="user", content=[Text(text=self.replay.then)]))
            self._record_trim(self.context.trim_if_near(messages))
            replayed = self.replay is not None and self.replay.covers(self.steps)
            self.trajectory.write(
                "model_request", step=self.steps, model=self.provider.model, new_messages=_dump(messages[recorded:]), **({"replayed": True} if replayed else {})
            )  # fmt: skip
            recorded = len(messages)
            try:
                reply = self._replayed(self.steps, messages) if replayed else self._ask(messages)
            except TimeoutError:
                return "timeout"
            messages.append(reply.message)
            self.final_text = reply.message.text or self.final_text
            self.trace.model_turn(self.steps, reply.message, replayed=replayed)
            if reply.stop_reason == END_TURN:
                if reply.unreadable_call is None:
                    if replayed and self.replay is not None and self.replay.then is not None:
                        continue  # a fork at the recorded end goes on, with the new instructions
                    return "completed"
                if self._corrected:  # the second in a row: telling it again will not help
                    self.guard.record("unreadable_calls", f"the model wrote tool calls that could not be read twice in a row ({reply.unreadable_call})")
                    return "stuck"
                messages.append(self._correction(reply.unreadable_call))
                continue
            self._corrected = False
            if reply.stop_reason not in (TOOL_USE, MAX_TOKENS):
                raise ModelError(f"the model stopped with stop_reason {reply.stop_reason!r}")
            answer = self._answer(reply.message, cut_off=reply.stop_reason == MAX_TOKENS)
            if self._nudged_at is not None and self._repeats > self._nudged_at:  # told once, and it went on
                self.guard.record(
                    "limits.max_repeated_calls", f"the model made the same {self._repeated_tool} call with the same result {self._repeats} times in a row"
                )
                return "stuck"
            messages.append(self._with_nudge(answer))
        return "max_steps"

    def _forked(self, results: Message) -> Message:
        """The last recorded tool results, followed by the instructions of the person who forked the run."""
        assert self.replay is not None and self.replay.then is not None
        return Message(role="user", content=[*results.content, Text(text=self.replay.then)])

    def _replayed(self, step: int, messages: list[Message]) -> Reply:
        """The recorded reply of `step`, counted as if it had just been received (usage, budget, context)."""
        assert self.replay is not None
        reply = self.replay.reply(step)
        if reply.usage is not None and self.replay.count_usage:
            self.provider.usage.add(reply.usage)
        self.context.observe(reply.usage, messages)
        self.trajectory.write(
            "model_response", step=step, duration_s=0.0, stop_reason=reply.stop_reason, usage=reply.usage.model_dump() if reply.usage else None,
            message=_dump([reply.message])[0], notes=reply.notes, response=reply.raw, unreadable_call=reply.unreadable_call, replayed=True,
        )  # fmt: skip
        return reply

    def _correction(self, problem: str) -> Message:
        """The one message telling the model its reply looked like a tool call that could not be read."""
        self._corrected = True
        self.trace.note(f"the reply looks like a tool call that could not be read ({problem}); the model is told how to write one")
        return Message(role="user", content=[Text(text=UNREADABLE_CALL.format(problem=problem))])

    def _with_nudge(self, answer: Message) -> Message:
        """The answer, told once that it repeats itself when the same call and result reached the policy's count."""
        if self._repeats < self.limits.max_repeated_calls or self._nudged_at is not None:
            return answer
        self._nudged_at = self._repeats
        self.trace.note(f"the same call was made {self._repeats} times in a row with the same result; the model is told to change course")
        return Message(role="user", content=[*answer.content, Text(text=REPEATED_CALL.format(name=self._repeated_tool, count=self._repeats))])

    @property
    def _repeated_tool(self) -> str:
        return self._last_call[0] if self._last_call else ""

    def _ask(self, messages: list[Message]) -> Reply:
        """One model turn, recorded; a request the API finds too long is trimmed and sent again while trimming helps."""
        while True:
            started = time.monotonic()
            try:
                timeout = max(0.001, self.limits.deadline - started)
                reply = self.provider.complete(self.system, messages, timeout=timeout, max_tokens=self.context.reply_tokens)
                break
            except ContextOverflow as exc:
                reply_tokens = self.context.reply_tokens
                trim = self.context.trim_after_overflow(messages, exc.window, exc.prompt_tokens) or self.context.shorten_newest(messages)
                # With nothing trimmed, sending again helps only if the prompt fits and the reply's room shrank.
                fits = exc.prompt_tokens is not None and exc.prompt_tokens <= self.context.room
                if trim is None and not (fits and self.context.reply_tokens < reply_tokens):
                    raise
                self._record_trim(trim)
        self.context.observe(reply.usage, messages)
        self.trajectory.write(
            "model_response", step=self.steps, duration_s=round(time.monotonic() - started, 3), stop_reason=reply.stop_reason,
            usage=reply.usage.model_dump() if reply.usage else None, message=_dump([reply.message])[0], notes=reply.notes, response=reply.raw,
            unreadable_call=reply.unreadable_call,
        )  # fmt: skip
        for note in reply.notes:
            if note not in self._noted:  # said once on the terminal; every reply's notes are in the trajectory
                self._noted.add(note)
                self.trace.note(note)
        return reply

    def _record_trim(self, trim: Trim | None) -> None:
        if trim is not None:
            self.trajectory.write("context_trimmed", step=self.steps, **asdict(trim))
            what = f"{len(trim.stubbed)} old tool results replaced by a stub" if trim.stubbed else f"{len(trim.shortened)} new tool results shortened"
            self.trace.note(f"context trimmed ({trim.reason}): {what}, ~{trim.tokens_before:,} → ~{trim.tokens_after:,} tokens")

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
        output = cap_tokens(cap_text(output, self.limits.max_result_chars), self.context.result_tokens) or "(no output)"
        replayed = self.replay is not None and self.replay.covers(self.steps)
        if replayed:
            assert self.replay is not None
            output, is_error = self.replay.result(self.steps, call.name, output, is_error)
        duration = round(time.monotonic() - started, 3)
        recorded_input = call.arguments if call.problem is None else call.raw_arguments
        self._count_repeats(call.name, json.dumps(recorded_input, sort_keys=True), output, is_error)
        self.trajectory.write(
            "tool_call", step=self.steps, id=call.id, name=call.name, input=recorded_input,
            output=output, is_error=is_error, meta=meta, duration_s=duration, **({"replayed": True} if replayed else {}),
        )  # fmt: skip
        self.trace.tool_result(output, is_error, meta)
        return ToolResult(call_id=call.id, output=output, is_error=is_error)

    def _count_repeats(self, *call: object) -> None:
        signature = tuple(_TIMINGS.sub("#", str(value)) for value in call)
        if signature == self._last_call:
            self._repeats += 1
        else:
            self._last_call, self._repeats, self._nudged_at = signature, 1, None


def _dump(messages: list[Message]) -> list[dict[str, Any]]:
    return [message.model_dump(mode="json", exclude_none=True) for message in messages]
