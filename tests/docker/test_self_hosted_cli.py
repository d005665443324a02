"""Self-hosted models through the real CLI and real containers: a model that writes its calls as text under
strict.toml, a model that loops, and a passing verify deciding success; what `airlock show` and the report say."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import PROJECT, airlock

from orchestrator.demo import TEST_COMMAND
from orchestrator.providers.scripted import chat_text, reply, text, tool_use

SERVED = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
EDIT = {"path": "calculator.py", "old_str": "def multiply(a, b):\n    return a + b", "new_str": "def multiply(a, b):\n    return a * b"}


def fenced(name: str, **arguments: object) -> str:
    return "```json\n" + json.dumps({"name": name, "arguments": arguments}) + "\n```"


def test_a_model_writing_calls_as_text_fixes_the_calculator_under_strict_toml(run_scripted, calculator_repo: Path) -> None:
    turns = [
        chat_text(fenced("run_bash", command=TEST_COMMAND)),
        chat_text("<tool_call>\n" + json.dumps({"name": "edit_file", "arguments": EDIT}) + "\n</tool_call>"),
        chat_text(fenced("run_bash", command="python --version && " + TEST_COMMAND)),  # `python` exists in the image
        chat_text("multiply multiplies now; the tests pass."),
    ]
    strict = str(PROJECT / "policies" / "strict.toml")
    result, api = run_scripted(calculator_repo, turns, "--policy", strict, "--verify", TEST_COMMAND, provider="openai", server={"models": [SERVED]})
    assert result.exit_code == 0, result.stdout + result.stderr  # strict.toml no longer refuses a model without a price
    record = result.record
    assert (record["status"], record["tool_calls"], record["verify"]["passed"], record["cost_usd"]) == ("completed", 3, True, None)
    assert (record["model"], record["served_model"]) == ("scripted", SERVED)
    assert result.stdout.count("tool call parsed from text") == 1
    assert "Python 3." in result.events("tool_call")[2]["output"]
    shown = airlock("show", str(result.out))
    assert shown.returncode == 0 and f"scripted (served: {SERVED})" in shown.stdout and "cost unknown" in shown.stdout


def test_a_looping_model_stops_as_stuck_and_a_passing_verify_still_makes_it_a_success(run_scripted, calculator_repo: Path, tmp_path: Path) -> None:
    edit = tool_use("edit_file", **EDIT)
    loop = [reply(text("Let me try that edit again."), tool_use("edit_file", path="calculator.py", old_str="return a / b", new_str="x")) for _ in range(8)]
    result, _ = run_scripted(calculator_repo, [reply(edit), *loop], "--max-steps", "30", provider="openai")
    assert result.exit_code == 1 and result.record["status"] == "stuck" and result.record["steps"] == 5
    assert b"+    return a * b" in result.patch
    shown = airlock("show", str(result.out))
    assert "■ stuck" in shown.stdout and "limits.max_repeated_calls" in shown.stdout

    verified, _ = run_scripted(calculator_repo, [reply(edit), *loop], "--verify", TEST_COMMAND, provider="openai")
    assert (verified.exit_code, verified.record["status"], verified.record["verify"]["passed"]) == (0, "stuck", True)
    report = airlock("review", str(verified.out))
    page = Path(report.stdout.strip()).read_text()
    assert report.returncode == 0 and 'title="stuck"' in page and '<div class="v">1</div><div class="k">succeeded</div>' in page
