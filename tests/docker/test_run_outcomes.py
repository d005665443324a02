"""How runs end: every status and exit code, with the work done so far kept and no container left."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import PROJECT, airlock_env

from orchestrator.providers.scripted import ApiError, ScriptedModelServer, Stall, reply, text, tool_use

FIX = tool_use("edit_file", path="calculator.py", old_str="return a + b\n\n\ndef subtract", new_str="return a + b  # checked\n\n\ndef subtract")


def test_non_retryable_api_error_ends_as_model_error_and_keeps_the_work(run_scripted, calculator_repo: Path) -> None:
    turns = [reply(FIX), ApiError(400, "prompt is too long: 210000 tokens > 200000 maximum", "invalid_request_error")]
    result, api = run_scripted(calculator_repo, turns)
    assert result.exit_code == 4
    record = result.record
    assert record["status"] == "model_error"
    assert "prompt is too long: 210000 tokens > 200000 maximum" in record["error"]
    assert "prompt is too long" in result.stdout  # shown to the user
    assert b"+    return a + b  # checked" in result.patch  # nothing lost
    assert record["patch"]["files_changed"] == 1 and record["steps"] == 2
    assert len(api.requests) == 2  # a 400 is not retried


def test_rate_limits_and_overload_are_retried(run_scripted, calculator_repo: Path) -> None:
    fast = {"retry-after-ms": "10"}
    turns = [ApiError(429, "rate limited", "rate_limit_error", fast), ApiError(529, "overloaded", "overloaded_error", fast), reply(text("done"))]
    result, api = run_scripted(calculator_repo, turns)
    assert result.exit_code == 0, result.stdout
    assert result.record["status"] == "completed" and len(api.requests) == 3


def test_persistent_overload_becomes_model_error(run_scripted, calculator_repo: Path) -> None:
    overloaded = ApiError(529, "Overloaded", "overloaded_error", {"retry-after-ms": "5"})
    result, api = run_scripted(calculator_repo, [overloaded] * 10)
    assert result.exit_code == 4
    assert "Overloaded" in result.record["error"]
    assert len(api.requests) == 5  # the first try and four retries


def test_step_limit_stops_the_run_and_exports_the_patch(run_scripted, calculator_repo: Path) -> None:
    turns = [reply(FIX), *[reply(tool_use("run_bash", command="true")) for _ in range(5)]]
    result, api = run_scripted(calculator_repo, turns, "--max-steps", "3")
    assert result.exit_code == 1
    assert result.record["status"] == "max_steps" and result.record["steps"] == 3
    assert b"# checked" in result.patch
    assert len(api.requests) == 3


def test_wall_clock_timeout_ends_the_run(run_scripted, calculator_repo: Path) -> None:
    turns = [reply(FIX, tool_use("run_bash", command="sleep 300")), reply(text("never reached"))]
    result, _ = run_scripted(calculator_repo, turns, "--timeout", "6", "--command-timeout", "120")
    assert result.exit_code == 1
    assert result.record["status"] == "timeout"
    assert result.record["duration_s"] < 60
    assert b"# checked" in result.patch


def test_a_model_call_stalled_past_the_deadline_ends_the_run_as_timeout(run_scripted, calculator_repo: Path) -> None:
    result, api = run_scripted(calculator_repo, [reply(FIX), Stall(300)], "--timeout", "8")
    assert result.exit_code == 1
    assert result.record["status"] == "timeout" and result.record["steps"] == 2
    assert result.record["duration_s"] < 60  # not the 300 s stall, nor retries of it
    assert len(api.requests) == 2
    assert b"# checked" in result.patch
    assert result.events()[-1]["type"] == "run_end"


def test_verify_failure_is_recorded(run_scripted, calculator_repo: Path) -> None:
    result, _ = run_scripted(calculator_repo, [reply(text("I did nothing."))], "--verify", "python3 -m pytest -q -p no:cacheprovider")
    assert result.exit_code == 1
    verify = result.record["verify"]
    assert result.record["status"] == "verify_failed"
    assert verify["passed"] is False and verify["exit_code"] == 1 and "3 failed" in verify["output_tail"]
    # The terminal says why, not only that it failed: the last lines of its output.
    verdict = result.stdout[result.stdout.index("verify python3 -m pytest") :]
    assert "failed (exit 1)" in verdict and "3 failed" in verdict


def test_bad_tool_calls_come_back_as_errors_the_model_can_fix(run_scripted, calculator_repo: Path) -> None:
    turns = [
        reply(tool_use("launch_missiles", target="moon")),
        reply(tool_use("read_file")),
        reply(tool_use("read_file", path="calculator.py", start_line="first")),
        reply(tool_use("edit_file", path="calculator.py", old_str="return a", new_str="return b")),
        reply(tool_use("read_file", path="no/such/file.py")),
        reply(text("giving up")),
    ]
    result, api = run_scripted(calculator_repo, turns)
    assert result.exit_code == 0
    calls = result.events("tool_call")
    assert all(call["is_error"] for call in calls)
    assert "Unknown tool 'launch_missiles'" in calls[0]["output"]
    assert "path" in calls[1]["output"] and "Field required" in calls[1]["output"]
    assert "start_line" in calls[2]["output"]
    assert "3" in calls[3]["output"]  # old_str occurs three times
    # Each error went back to the model as an is_error tool_result with the matching id.
    for request, call in zip(api.requests[1:], calls, strict=True):
        [result_block] = request["messages"][-1]["content"]
        assert result_block["tool_use_id"] == call["id"] and result_block["is_error"] is True


def test_max_tokens_continues_the_turn(run_scripted, calculator_repo: Path) -> None:
    cut = reply(text("Let me write the file"), tool_use("write_file", path="half.txt"), stop_reason="max_tokens")
    result, api = run_scripted(calculator_repo, [cut, reply(text("done"))])
    assert result.exit_code == 0 and result.record["status"] == "completed"
    answer = api.requests[1]["messages"][-1]["content"]
    assert answer[0]["type"] == "tool_result" and answer[0]["is_error"] is True and "cut off" in answer[0]["content"]
    assert answer[1]["type"] == "text" and "continue" in answer[1]["text"].lower()
    assert result.patch == b""  # the incomplete call was not run


def test_unexpected_stop_reason_is_a_clear_model_error(run_scripted, calculator_repo: Path) -> None:
    result, _ = run_scripted(calculator_repo, [reply(text("I can't help with that."), stop_reason="refusal")])
    assert result.exit_code == 4
    assert "refusal" in result.record["error"]


def test_prompt_caching_marks_the_stable_prefix_and_the_moving_tail(run_scripted, calculator_repo: Path) -> None:
    turns = [reply(tool_use("run_bash", command="true")), reply(tool_use("run_bash", command="true")), reply(text("done"))]
    result, api = run_scripted(calculator_repo, turns)
    assert result.exit_code == 0
    for request in api.requests:
        assert "cache_control" in request["tools"][-1]
        assert all("cache_control" not in tool for tool in request["tools"][:-1])
        assert request["system"][-1]["cache_control"] == {"type": "ephemeral"}
        messages = request["messages"]
        assert "cache_control" in messages[0]["content"][-1] and "cache_control" in messages[-1]["content"][-1]
        marked = [m for m in messages if any("cache_control" in block for block in m["content"])]
        assert len(marked) <= 2  # at most four breakpoints: tools, system, task, tail
    # The prefix is byte-identical from request to request: each request repeats the previous one exactly
    # (cache marks aside) and appends to it.
    assert api.requests[0]["system"] == api.requests[2]["system"] and api.requests[0]["tools"] == api.requests[2]["tools"]
    unmarked = [_without_cache_marks(request["messages"]) for request in api.requests]
    assert all(later[: len(earlier)] == earlier for earlier, later in itertools.pairwise(unmarked))
    # Nothing run-specific is in it: a second run (another run id, another time) sends the same stable prefix.
    again, api2 = run_scripted(calculator_repo, turns[:1] + [reply(text("done"))])
    assert again.exit_code == 0
    assert result.record["run_id"] not in json.dumps(api.requests) and again.record["run_id"] not in json.dumps(api2.requests)
    prefix = [(first["tools"], first["system"], _without_cache_marks(first["messages"])[:1]) for first in (api.requests[0], api2.requests[0])]
    assert prefix[0] == prefix[1]


def _without_cache_marks(messages: list[dict]) -> list[dict]:
    return [{**m, "content": [{k: v for k, v in block.items() if k != "cache_control"} for block in m["content"]]} for m in messages]


def test_a_repo_larger_than_the_workspace_is_refused_before_anything_starts(run_scripted, calculator_repo: Path) -> None:
    (calculator_repo / "big.bin").write_bytes(b"\0" * (40 * 1024**2))
    result, api = run_scripted(calculator_repo, [reply(text("never asked"))], "--disk", "32m")
    assert result.exit_code == 2
    assert "does not fit in the sandbox workspace (32 MiB): raise --disk" in result.stderr
    assert api.requests == [] and not result.out.exists()


def test_a_sandbox_killed_for_memory_says_so_at_once(run_scripted, calculator_repo: Path) -> None:
    """A command takes more memory than the limit: it is killed, as it should be, and the run goes on.
    Then a command fills /tmp (a tmpfs, whose pages its death does not give back) and the tool server needs
    memory there is none of: the kernel kills it too, at the latest at the next write. The engine never
    ends the stream of a killed process, so the run has to find that out, and say why, at once."""
    hog = tool_use("run_bash", command="python3 -c 'hog = b\"x\" * (400 * 2**20)'")
    fill = tool_use("run_bash", command="head -c 400m /dev/zero > /tmp/fill; echo survived")
    big_write = tool_use("write_file", path="big.txt", content="x" * (24 * 1024**2))
    turns = [reply(FIX), reply(hog), reply(fill), reply(big_write), reply(text("never reached"))]
    started = time.monotonic()
    result, _ = run_scripted(calculator_repo, turns, "--memory", "320m", "--disk", "64m")
    assert time.monotonic() - started < 120  # not the minutes of a read that nobody ends
    assert result.exit_code == 3, result.stdout + result.stderr
    assert result.events("tool_call")[1]["meta"]["exit_code"] == -9  # the command was the first to go
    assert result.record["status"] == "sandbox_error"
    expected = "the sandbox ran out of memory (limit 320 MiB) while running the agent's tools: raise --memory (the workspace of 64 MiB counts toward it)"
    assert result.record["error"] == expected
    assert expected in result.stdout
    assert b"# checked" in result.patch or not result.record["patch"]["exported"]


def test_a_tool_server_killed_by_a_signal_says_so(run_scripted, calculator_repo: Path) -> None:
    """The engine keeps a dead process's stream open: the run notices within a second, and names the signal."""
    started = time.monotonic()
    result, _ = run_scripted(calculator_repo, [reply(FIX), reply(tool_use("run_bash", command="kill -9 $PPID")), reply(text("never reached"))])
    assert time.monotonic() - started < 90
    assert result.exit_code == 3 and result.record["status"] == "sandbox_error"
    assert result.record["error"].startswith("the tool server exited (killed by SIGKILL)"), result.record["error"]
    assert b"# checked" in result.patch  # the work before it is kept


def test_a_closed_stdout_does_not_stop_the_run(calculator_repo: Path, tmp_path: Path) -> None:
    """`airlock run ... | head -1`: the reader goes away; the run goes on, exports its patch and ends as it would."""
    out = tmp_path / "out"
    turns = [reply(FIX), *[reply(tool_use("run_bash", command=f"seq 1 {n}")) for n in range(5)], reply(text("done"))]
    with ScriptedModelServer(turns) as api:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "run", str(calculator_repo), "--task", "t", "--out", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=airlock_env(api.base_url), cwd=PROJECT,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.readline()
        proc.stdout.close()  # as `head -1` does
        stderr = proc.stderr.read().decode()
        assert proc.wait(timeout=300) == 0, stderr
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "completed" and record["steps"] == 7 and record["patch"]["exported"] is True
    assert b"# checked" in (out / "patch.diff").read_bytes()
    assert "Traceback" not in stderr and "Broken pipe" not in stderr, stderr


def test_cache_tokens_reported_by_the_api_are_summed_into_run_json_and_the_cost(run_scripted, calculator_repo: Path, tmp_path: Path) -> None:
    policy = tmp_path / "prices.toml"
    policy.write_text('[budget.prices."priced-model"]\ninput = 3.0\noutput = 15.0\ncache_write = 3.75\ncache_read = 0.3\n')
    first = {"input_tokens": 100, "output_tokens": 20, "cache_creation_input_tokens": 5000, "cache_read_input_tokens": 0}
    second = {"input_tokens": 40, "output_tokens": 10, "cache_creation_input_tokens": 300, "cache_read_input_tokens": 5000}
    turns = [reply(tool_use("run_bash", command="true"), usage=first), reply(text("done"), usage=second)]
    result, _ = run_scripted(calculator_repo, turns, "--model", "priced-model", "--policy", str(policy))
    assert result.exit_code == 0
    assert result.record["usage"] == {"input_tokens": 140, "output_tokens": 30, "cache_creation_input_tokens": 5300, "cache_read_input_tokens": 5000}
    expected = (140 * 3.0 + 30 * 15.0 + 5300 * 3.75 + 5000 * 0.3) / 1e6
    assert result.record["cost_usd"] == pytest.approx(expected, abs=1e-6)
    assert "cache read 5,000" in result.stdout and "cache write 5,300" in result.stdout
