"""The calculator exercise end to end: real CLI, real SDK over HTTP, real Docker."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import airlock, tree_snapshot
from orchestrator.demo import TEST_COMMAND, calculator_script
from orchestrator.model import DEFAULT_MODEL


def test_calculator_exercise_produces_a_patch_that_fixes_it(run_scripted, calculator_repo: Path, tmp_path: Path) -> None:
    before = tree_snapshot(calculator_repo)
    result, api = run_scripted(calculator_repo, calculator_script(), "--verify", TEST_COMMAND)

    assert result.exit_code == 0, result.stderr + result.stdout
    record = result.record
    assert record["status"] == "completed"
    assert record["steps"] == 5 and record["tool_calls"] == 4
    assert record["verify"] == {**record["verify"], "command": TEST_COMMAND, "exit_code": 0, "passed": True}
    assert record["patch"]["files_changed"] == 1
    assert (record["patch"]["insertions"], record["patch"]["deletions"]) == (1, 1)
    assert record["usage"]["input_tokens"] > 0 and record["usage"]["output_tokens"] > 0
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

    # Every request went through the real SDK, with the tools and the task.
    assert len(api.requests) == 5
    assert {tool["name"] for tool in api.requests[0]["tools"]} == {"read_file", "write_file", "edit_file", "list_dir", "search", "run_bash"}
    assert api.requests[0]["messages"][0]["content"][0]["text"] == "Do the task."
    assert api.requests[0]["model"] == DEFAULT_MODEL
    key = "test-key-not-secret"  # sent the way this SDK version sends it
    assert all(h.get("x-api-key") == key or h.get("authorization") == f"Bearer {key}" for h in api.headers)
