"""Both wire APIs through the real SDKs: what real servers do, retries, and the command line's provider options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import airlock, airlock_env

from orchestrator.providers.scripted import ApiError, ScriptedModelServer, raw_tool_use, reply, text, tool_use

FIX = tool_use("edit_file", path="calculator.py", old_str="def multiply(a, b):\n    return a + b", new_str="def multiply(a, b):\n    return a * b")
FIXED = b"-    return a + b\n+    return a * b\n"


def test_openai_several_tool_calls_in_one_message_are_all_answered_in_order(run_scripted, calculator_repo: Path) -> None:
    turns = [reply(tool_use("run_bash", command="echo one"), tool_use("run_bash", command="echo two"), FIX), reply(text("done"))]
    result, api = run_scripted(calculator_repo, turns, provider="openai")
    assert result.exit_code == 0, result.stdout
    assert FIXED in result.patch
    calls = [m for m in api.requests[1]["messages"] if m["role"] == "assistant"][0]["tool_calls"]
    answers = [m for m in api.requests[1]["messages"] if m["role"] == "tool"]
    assert [a["tool_call_id"] for a in answers] == [c["id"] for c in calls]
    assert [a["content"].splitlines()[0] for a in answers[:2]] == ["one", "two"]


def test_openai_malformed_arguments_come_back_as_a_tool_error_and_the_run_goes_on(run_scripted, calculator_repo: Path) -> None:
    broken = '{"command": "echo hi"'  # cut off before the closing brace
    turns = [reply(raw_tool_use("run_bash", broken), raw_tool_use("run_bash", "[1, 2]")), reply(FIX), reply(text("done"))]
    result, api = run_scripted(calculator_repo, turns, provider="openai")
    assert result.exit_code == 0, result.stdout
    assert result.record["status"] == "completed" and FIXED in result.patch
    answers = [m for m in api.requests[1]["messages"] if m["role"] == "tool"]
    assert answers[0]["content"].startswith("ERROR: Not run: The arguments are not valid JSON")
    assert answers[1]["content"].startswith("ERROR: Not run: The arguments must be a JSON object")
    # The model's own text is sent back verbatim, so it sees what it wrote.
    sent = [m for m in api.requests[1]["messages"] if m["role"] == "assistant"][0]["tool_calls"]
    assert [c["function"]["arguments"] for c in sent] == [broken, "[1, 2]"]
    assert [c["input"] for c in result.events("tool_call")[:2]] == [broken, "[1, 2]"]


def test_openai_finish_reason_length_continues_and_missing_usage_is_no_error(run_scripted, calculator_repo: Path) -> None:
    turns = [
        reply(text("I will fix"), stop_reason="max_tokens", omit_usage=True),
        reply(FIX, omit_usage=True),
        reply(text("done"), omit_usage=True),
    ]
    result, api = run_scripted(calculator_repo, turns, provider="openai")
    assert result.exit_code == 0, result.stdout
    assert api.requests[1]["messages"][-1] == {
        "role": "user",
        "content": "Your previous reply was cut off by the output token limit. Continue where you left off.",
    }
    assert result.record["usage"] == {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    assert [e["usage"] for e in result.events("model_response")] == [None, None, None]


def test_openai_usage_with_cached_tokens_is_counted_as_cache_reads(run_scripted, calculator_repo: Path) -> None:
    usage = {"input_tokens": 300, "cache_read_input_tokens": 1200, "output_tokens": 40}
    result, _ = run_scripted(calculator_repo, [reply(text("done"), usage=usage)], provider="openai")
    assert result.record["usage"] == {"input_tokens": 300, "output_tokens": 40, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1200}


@pytest.mark.parametrize("refused", [["tool_choice"], ["tool_choice", "parallel_tool_calls"]])
def test_openai_server_refusing_optional_parameters_gets_requests_without_them(run_scripted, calculator_repo: Path, refused: list[str]) -> None:
    result, api = run_scripted(calculator_repo, [reply(FIX), reply(text("done"))], provider="openai", server={"refuse_parameters": refused})
    assert result.exit_code == 0, result.stdout
    assert len(api.refusals) == len(refused)  # each parameter is dropped once, then never sent again
    assert all(name not in request for request in api.requests for name in refused)
    notes = [note for event in result.events("model_response") for note in event["notes"]]
    assert [note.split("`")[1] for note in notes] == refused
    assert "the server refused `tool_choice`" in result.stdout


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
@pytest.mark.parametrize("status", [429, 503])
def test_rate_limits_and_server_errors_are_retried_after_the_time_the_server_asks(run_scripted, calculator_repo: Path, provider: str, status: int) -> None:
    turns = [ApiError(status, "slow down", "rate_limit_error", {"retry-after": "1"}), reply(text("done"))]
    result, api = run_scripted(calculator_repo, turns, provider=provider)
    assert result.exit_code == 0, result.stdout
    assert len(api.requests) == 2
    assert api.times[1] - api.times[0] >= 0.95  # the SDK waited the second the server asked for


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_non_retryable_error_ends_the_run_as_model_error_with_the_servers_message(run_scripted, calculator_repo: Path, provider: str) -> None:
    turns = [reply(FIX), ApiError(404, "model 'nope' not found on this server", "not_found_error")]
    result, api = run_scripted(calculator_repo, turns, provider=provider)
    assert result.exit_code == 4
    assert result.record["status"] == "model_error"
    assert "404" in result.record["error"] and "model 'nope' not found on this server" in result.record["error"]
    assert FIXED in result.patch  # nothing lost
    assert len(api.requests) == 2  # not retried


def test_api_key_env_names_the_variable_holding_the_key(calculator_repo: Path, tmp_path: Path) -> None:
    with ScriptedModelServer([reply(text("done"))]) as api:
        env = airlock_env(MY_SERVER_KEY="key-from-my-variable")
        del env["OPENAI_API_KEY"]
        args = ["--provider", "openai", "--base-url", api.openai_base_url, "--model", "local", "--api-key-env", "MY_SERVER_KEY"]
        proc = airlock("run", str(calculator_repo), "--task", "t", "--out", str(tmp_path / "out"), *args, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert api.headers[0]["authorization"] == "Bearer key-from-my-variable"


def test_openai_run_is_recorded_with_its_provider_and_replays_byte_for_byte(run_scripted, calculator_repo: Path, tmp_path: Path) -> None:
    from orchestrator.demo import TEST_COMMAND, calculator_script

    result, _ = run_scripted(calculator_repo, calculator_script(), "--verify", TEST_COMMAND, provider="openai")
    assert result.exit_code == 0, result.stdout
    start = result.events("run_start")[0]
    assert (start["provider"], start["version"], result.record["provider"]) == ("openai", 2, "openai")
    assert result.events("model_response")[0]["response"]["object"] == "chat.completion"  # the wire body, for replay
    proc = airlock("replay", str(result.out), "--out", str(tmp_path / "replayed"), "--ignore-regex", r"in [0-9.]+s")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "replayed" / "patch.diff").read_bytes() == result.patch
    assert json.loads((tmp_path / "replayed" / "replay.json").read_text())["identical_patch"] is True
