"""A lean context: results truncated once when made, and long runs trimmed near the context window, never dying of it.

A scripted 40-step run whose tool outputs add up to several times a small context window."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import pytest
from helpers import airlock

from orchestrator.demo import long_run_script
from orchestrator.providers.scripted import ANTHROPIC, OPENAI, prompt_tokens, reply, text

STEPS = 40
WINDOW = 20_000
MAX_REPLY = 1000
ROOM = WINDOW - MAX_REPLY  # the prompt's room: the window less the reply's
BIG_STEP = 5  # this step's output is far over max_output_chars
MAX_OUTPUT_CHARS = 4000


def forty_steps() -> list:
    return long_run_script(STEPS, big_step=BIG_STEP)


def _without_cache_marks(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    messages = copy.deepcopy(messages)
    for message in messages:
        for block in message["content"] if isinstance(message["content"], list) else []:
            block.pop("cache_control", None)
    return messages


def _policy(tmp_path: Path, **limits: int) -> str:
    path = tmp_path / "policy.toml"
    path.write_text("[limits]\n" + "".join(f"{key} = {value}\n" for key, value in limits.items()))
    return str(path)


def test_a_long_run_is_trimmed_in_large_steps_below_the_configured_window(run_scripted, calculator_repo: Path, tmp_path: Path) -> None:
    policy = _policy(tmp_path, context_window=WINDOW, max_output_chars=MAX_OUTPUT_CHARS, max_steps=STEPS + 5, max_reply_tokens=MAX_REPLY)
    result, api = run_scripted(calculator_repo, forty_steps(), "--policy", policy)
    assert result.exit_code == 0, result.stdout
    assert result.record["status"] == "completed" and result.record["steps"] == STEPS + 1

    # No request ever came near the window: the server-side size stays under it.
    sizes = [prompt_tokens(ANTHROPIC, request) for request in api.requests]
    assert max(sizes) < WINDOW, sizes
    assert sum(sizes[-1:]) and sum(s for s in sizes) > 3 * WINDOW  # the run as a whole was far bigger than the window

    # Trimmed in a few large steps, each recorded in the trajectory, not a little every turn.
    trims = result.events("context_trimmed")
    steps = [t["step"] for t in trims]
    assert 2 <= len(trims) <= STEPS // 4 and all(b - a >= 3 for a, b in itertools.pairwise(steps)), steps
    # Each trim frees a fifth of the prompt's room or more, from above the trigger (75%) to near the target (50%).
    freed = [(t["tokens_before"], t["tokens_after"]) for t in trims]
    assert all(before > 0.75 * ROOM and before - after >= ROOM // 5 and after < 0.6 * ROOM for before, after in freed), freed
    assert all(len(t["stubbed"]) >= 3 and t["window"] == WINDOW for t in trims)
    assert "context trimmed" in result.stdout
    shown = airlock("show", str(result.out))  # and a reviewer sees where it happened
    assert shown.returncode == 0 and shown.stdout.count("old tool results replaced by a stub") == len(trims)

    # Between trims, each request only appends to the previous one: old turns are never rewritten.
    trimmed_before = {t["step"] for t in trims}
    for step in range(2, len(api.requests) + 1):
        previous, current = (_without_cache_marks(api.requests[i]["messages"]) for i in (step - 2, step - 1))
        assert (current[: len(previous)] == previous) == (step not in trimmed_before), step

    # Stubbed results say what happened; the newest results (two seen, one not yet) are whole.
    last = api.requests[-1]["messages"]
    results = [block for message in last for block in message["content"] if isinstance(block, dict) and block.get("type") == "tool_result"]
    assert "old tool result removed to stay within the context window" in results[0]["content"]
    assert [r["content"].split("\n", 1)[0] for r in results[-3:]] == [str(10000 + n) for n in range(STEPS - 2, STEPS + 1)]

    # The huge output was truncated once, when it was made: head and tail, and how much was dropped.
    big = result.events("tool_call")[BIG_STEP - 1]
    assert len(big["output"]) < MAX_OUTPUT_CHARS + 200
    assert big["output"].startswith("1\n2\n3\n") and "100000" in big["output"]
    assert "bytes of output dropped; narrow the command with grep, head or tail" in big["output"]


def test_a_server_that_says_the_prompt_is_too_long_gets_a_trimmed_one_and_the_run_goes_on(run_scripted, calculator_repo: Path, tmp_path: Path) -> None:
    """The run does not know the server's window (128k assumed); the server's error tells it, and it trims."""
    policy = _policy(tmp_path, max_output_chars=MAX_OUTPUT_CHARS, max_steps=STEPS + 5)
    result, api = run_scripted(calculator_repo, forty_steps(), "--policy", policy, provider="openai", server={"context_window": WINDOW})
    assert result.exit_code == 0, result.stdout
    assert result.record["status"] == "completed" and result.record["steps"] == STEPS + 1
    trims = result.events("context_trimmed")
    assert trims[0]["reason"] == "the API said the prompt was too long"
    assert all(t["window"] == WINDOW for t in trims)  # learned from the server's message
    assert len(api.refusals) == 1  # after that the run trims before the server has to refuse
    assert max(prompt_tokens(OPENAI, request) for request in api.requests) <= WINDOW


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_too_long_with_nothing_left_to_trim_is_a_model_error_with_the_servers_message(run_scripted, calculator_repo: Path, provider: str) -> None:
    result, api = run_scripted(calculator_repo, [reply(text("never"))], provider=provider, task="x" * 40_000, server={"context_window": 3000})
    assert result.exit_code == 4
    assert result.record["status"] == "model_error"
    assert "3000" in result.record["error"] and ("prompt is too long" in result.record["error"] or "maximum context length" in result.record["error"])
    assert result.events("context_trimmed") == [] and len(api.refusals) == 1
