"""Resume and fork: a run's recorded steps, served again to the agent loop in a new sandbox.

A step is one model reply and the results of the tool calls it made. Replaying a step hands the loop the
recorded reply (no model request) and runs its tool calls for real, in order, in the new sandbox; each
result must match the recorded one (timings aside), or the repo or the environment changed since and the
replay stops at that step. The loop then goes on live from the recorded conversation, so a checkpoint
costs nothing to keep: it is the trajectory.

Only complete steps are replayed: a step cut short (its reply lost, or a tool call that never answered)
is asked of the model again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from orchestrator.conversation import Message, Reply, Usage
from orchestrator.errors import UsageError

# Numbers that differ between two runs of the same command without meaning anything (pytest's "in 0.03s").
_TIMINGS = re.compile(r"\d+\.\d+")


class ReplayDiverged(Exception):
    """A replayed tool call did not give its recorded result: the repo or its environment changed."""


@dataclass(frozen=True)
class RecordedStep:
    number: int
    reply: Reply
    calls: list[dict[str, Any]]  # its tool_call events, in order
    elapsed_s: float  # the run's clock when the step's last event was written


def complete_steps(events: list[dict[str, Any]]) -> list[RecordedStep]:
    """The trajectory's steps from the first on, up to the first one that is not complete."""
    responses = {e.get("step"): e for e in events if e.get("type") == "model_response" and isinstance(e.get("message"), dict)}
    calls: dict[Any, list[dict[str, Any]]] = {}
    for event in events:
        if event.get("type") == "tool_call":
            calls.setdefault(event.get("step"), []).append(event)
    steps: list[RecordedStep] = []
    number = 1
    while (response := responses.get(number)) is not None:
        reply = _reply(response)
        made = calls.get(number, [])
        if reply is None or len(made) != len(reply.message.tool_calls):
            break
        steps.append(RecordedStep(number, reply, made, float(max([response, *made], key=lambda e: e.get("t", 0)).get("t", 0))))
        number += 1
    return steps


def _reply(event: dict[str, Any]) -> Reply | None:
    try:
        usage = event.get("usage")
        return Reply(
            message=Message.model_validate(event["message"]), stop_reason=str(event.get("stop_reason")),
            usage=Usage.model_validate(usage) if isinstance(usage, dict) else None, raw=event.get("response") or {},
            notes=list(event.get("notes") or []), unreadable_call=event.get("unreadable_call"),
        )  # fmt: skip
    except (KeyError, ValueError, TypeError):
        return None


def _same(recorded: str, replayed: str) -> bool:
    return _TIMINGS.sub("#", recorded) == _TIMINGS.sub("#", replayed)


@dataclass
class Replay:
    """What the agent loop takes from the recording: the replies of `steps`, and the results to match.

    `then`: a message from the person who forked the run, added to the conversation once the replay ends."""

    steps: list[RecordedStep]
    then: str | None = None
    count_usage: bool = True  # the replayed replies' tokens count toward the budget (a fork's were paid for by its source)
    replayed: int = 0  # steps served so far
    _calls: dict[int, int] = field(default_factory=dict)  # step -> tool calls checked so far

    @property
    def last(self) -> int:
        return self.steps[-1].number if self.steps else 0

    def covers(self, step: int) -> bool:
        return 0 < step <= self.last

    def reply(self, step: int) -> Reply:
        self.replayed = max(self.replayed, step)
        return self.steps[step - 1].reply

    def result(self, step: int, name: str, output: str, is_error: bool) -> tuple[str, bool]:
        """The recorded result of the step's next call, once the replayed one matches it; else ReplayDiverged."""
        index = self._calls.get(step, 0)
        self._calls[step] = index + 1
        recorded = self.steps[step - 1].calls[index]
        if recorded.get("name") != name or bool(recorded.get("is_error")) != is_error or not _same(str(recorded.get("output", "")), output):
            ordinal = f"tool call {index + 1} of step {step}" if len(self.steps[step - 1].calls) > 1 else f"the tool call of step {step}"
            raise ReplayDiverged(
                f"replay diverged at step {step}: {ordinal} ({name}) gave a different result than recorded: the repo or its environment changed since the run"
            )
        return str(recorded.get("output", "")), bool(recorded.get("is_error"))


@dataclass(frozen=True)
class Continuation:
    """What a resumed or forked run starts from: the replay, the time already spent, what run.json carries over."""

    replay: Replay
    elapsed_s: float  # counted against the run's time limit: the interrupted run's clock (0 for a fork, a new run)
    record: dict[str, Any]  # run.json fields kept or set: started_at and resumes, or forked_from
    keep_trajectory_as: str | None = None  # a resume: the name the interrupted trajectory is kept under


def replay_until(steps: list[RecordedStep], at_step: int | None, source: str) -> list[RecordedStep]:
    """The steps a fork at `at_step` replays (all complete ones when None); UsageError if they are not all there."""
    if at_step is None:
        return steps
    if at_step < 0:
        raise UsageError(f"--at-step must be 0 or more, not {at_step}")
    if at_step > len(steps):
        raise UsageError(f"{source} has {len(steps)} complete step{'s' if len(steps) != 1 else ''}: it cannot be forked at step {at_step}")
    return steps[:at_step]
