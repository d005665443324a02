"""The calculator exercise end to end: real CLI, real SDK over HTTP, real Docker."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import airlock, tree_snapshot

from orchestrator.demo import TEST_COMMAND, calculator_script
from orchestrator.providers import DEFAULT_MODEL
from orchestrator.run.agent import SYSTEM_PROMPT

TOOL_NAMES = {"read_file", "write_file", "edit_file", "list_dir", "search", "run_bash"}


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_calculator_exercise_produces_a_patch_that_fixes_it(run_scripted, calculator_repo: Path, tmp_path: Path, provider: str) -> None:
    """The same scripted model, spoken through either wire API: the agent loop cannot tell them apart."""
    before = tree_snapshot(calculator_repo)
    result, api = run_scripted(calculator_repo, calculator_script(), "--verify", TEST_COMMAND, provider=provider)

    assert result.exit_code == 0, result.stderr + result.stdout
    record = result.record
    assert record["status"] == "completed"
    assert record["steps"] == 5 and record["tool_calls"] == 4
    assert record["verify"] == {**record["verify"], "command": TEST_COMMAND, "exit_code": 0, "passed": True}
    assert record["patch"]["files_changed"] == 1
    assert (record["patch"]["insertions"], record["patch"]["deletions"]) == (1, 1)
    usage = record["usage"]
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] + usage["cache_creation_input_tokens"] > 0 and usage["output_tokens"] > 0
    assert record["provider"] == provider
    assert record["sandbox"]["network"] == "none"
    assert record["error"] is None

    # The host repo was never touched.
    assert tree_snapshot(calculator_repo) == before

    # The tool results prove the commands ran in the sandbox: first 3 failures, then all passing.
    calls = result.events("tool_call")
    assert [c["name"] for c in calls] == ["run_bash", "read_file", "edit_file", "run_bash"]
    assert "3 failed, 1 passed" in calls[0]["output"]
    assert "def multiply(a, b):" in calls[1]["output"]
    assert "4 passed" in calls[3]["output"]

    # The exported patch, applied to a fresh copy, makes the tests pass.
    fresh = tmp_path / "fresh"
    shutil.copytree(calculator_repo, fresh)
    applied = airlock("apply", str(result.out / "patch.diff"), "--repo", str(fresh), "--allow-dirty")
    assert applied.returncode == 0, applied.stderr
    assert "return a * b" in (fresh / "calculator.py").read_text()
    assert b"-    return a + b\n+    return a * b\n" in result.patch

    # Every request went through the real SDK of the provider, with the tools and the task.
    assert len(api.requests) == 5
    if provider == "anthropic":
        assert set(api.paths) == {"/v1/messages"}
        assert {tool["name"] for tool in api.requests[0]["tools"]} == TOOL_NAMES
        assert api.requests[0]["messages"][0]["content"][0]["text"] == "Do the task."
        assert api.requests[0]["model"] == DEFAULT_MODEL
        assert usage["cache_read_input_tokens"] > 0  # the stable prefix was read back from the cache
        key = "test-key-not-secret"  # sent the way this SDK version sends it
        assert all(h.get("x-api-key") == key or h.get("authorization") == f"Bearer {key}" for h in api.headers)
    else:
        assert set(api.paths) == {"/v1/chat/completions"}
        assert {tool["function"]["name"] for tool in api.requests[0]["tools"]} == TOOL_NAMES
        system, task = api.requests[0]["messages"][:2]
        assert task == {"role": "user", "content": "Do the task."} and system["role"] == "system"
        # The model is told what its sandbox holds: this repo is a plain folder, so there is no history.
        assert system["content"].startswith(SYSTEM_PROMPT + "\n\nAbout this sandbox:\n- There is no .git: the repository's git history is not available")
        assert api.requests[0]["model"] == "scripted"
        # Each call's result is a `tool` message paired by id with the assistant's call.
        last = api.requests[-1]["messages"]
        calls = [call for m in last if m["role"] == "assistant" for call in m.get("tool_calls", [])]
        results = [m for m in last if m["role"] == "tool"]
        assert [c["id"] for c in calls] == [r["tool_call_id"] for r in results] and len(calls) == 4
        assert all(h.get("authorization") == "Bearer test-openai-key-not-secret" for h in api.headers)
