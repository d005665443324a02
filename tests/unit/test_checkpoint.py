"""What a resume or fork replays: the complete steps of a trajectory, and the results they must match."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.errors import UsageError
from orchestrator.run.checkpoint import Replay, ReplayDiverged, complete_steps, replay_until
from orchestrator.run.trajectory import Trajectory, read_events


def response(step: int, calls: int, t: float = 1.0) -> dict:
    content = [{"type": "tool_call", "id": f"c{step}-{i}", "name": "run_bash", "arguments": {"command": "true"}} for i in range(calls)]
    return {
        "type": "model_response", "t": t, "step": step, "stop_reason": "tool_use" if calls else "end_turn",
        "usage": {"input_tokens": 10, "output_tokens": 5}, "message": {"role": "assistant", "content": content or [{"type": "text", "text": "done"}]},
        "notes": [], "response": {"id": f"msg{step}"},
    }  # fmt: skip


def call(step: int, output: str = "ok", t: float = 1.5) -> dict:
    return {"type": "tool_call", "t": t, "step": step, "name": "run_bash", "input": {"command": "true"}, "output": output, "is_error": False}


def test_only_steps_with_every_tool_result_recorded_are_complete() -> None:
    events = [response(1, 1), call(1), response(2, 2), call(2), call(2, t=4.0), response(3, 2), call(3)]
    steps = complete_steps(events)
    assert [s.number for s in steps] == [1, 2]  # step 3 answered one of its two calls: it is asked again
    assert steps[1].elapsed_s == 4.0 and steps[0].reply.usage is not None and steps[0].reply.usage.input_tokens == 10


def test_a_gap_ends_the_complete_steps_and_a_final_reply_counts() -> None:
    assert [s.number for s in complete_steps([response(1, 1), call(1), response(3, 0)])] == [1]
    assert [s.number for s in complete_steps([response(1, 1), call(1), response(2, 0)])] == [1, 2]
    assert complete_steps([{"type": "model_response", "step": 1, "message": "not a message"}]) == []


def test_a_replayed_result_must_match_the_recorded_one_timings_aside() -> None:
    steps = complete_steps([response(1, 2), call(1, "3 passed in 0.03s"), call(1, "same")])
    replay = Replay(steps)
    assert replay.result(1, "run_bash", "3 passed in 0.41s", False) == ("3 passed in 0.03s", False)  # the recorded text goes on
    with pytest.raises(ReplayDiverged, match=r"^replay diverged at step 1: tool call 2 of step 1 \(run_bash\) gave a different result"):
        replay.result(1, "run_bash", "different", False)


def test_a_fork_past_the_complete_steps_is_refused_in_one_line() -> None:
    steps = complete_steps([response(1, 1), call(1)])
    assert replay_until(steps, 1, "run") == steps and replay_until(steps, 0, "run") == []
    with pytest.raises(UsageError, match="run has 1 complete step: it cannot be forked at step 2"):
        replay_until(steps, 2, "run")


def test_every_line_is_on_disk_at_once_and_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "trajectory.jsonl"
    trajectory = Trajectory(path)
    trajectory.write("model_response", step=1)
    assert json.loads(path.read_text())["step"] == 1  # readable before close: flushed and synced
    with path.open("a") as f:
        f.write('{"type": "tool_call", "step"')  # the kill came mid-line
    assert [e["type"] for e in read_events(path)] == ["model_response"]
    trajectory.close()
