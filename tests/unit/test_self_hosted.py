"""Self-hosted models as they really behave, end to end without Docker: the runner and agent loop through the real
openai SDK against the scripted server, answering as llama.cpp's server does with a model's own chat template
(tool calls in the text, its overflow error, its one listed model), and models that loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_run_local import FIX, events, run_locally

from orchestrator.conversation import Message, Text, ToolResult
from orchestrator.demo import TEST_COMMAND
from orchestrator.providers.base import ContextOverflow, api_error
from orchestrator.providers.openai_api import TEXT_CALL_NOTE
from orchestrator.providers.scripted import chat_text, reply, text, tool_use
from orchestrator.run.context import ContextWindow
from orchestrator.run.record import RunRecord, VerifyRecord
from orchestrator.tokens import cap_tokens, estimate_tokens

FIXED = "-    return a + b\n+    return a * b\n"
EDIT = {"path": "calculator.py", "old_str": "def multiply(a, b):\n    return a + b", "new_str": "def multiply(a, b):\n    return a * b"}


def fenced(name: str, **arguments: object) -> str:
    return "```json\n" + json.dumps({"name": name, "arguments": arguments}, indent=2) + "\n```"


def test_tool_calls_written_as_text_are_run_noted_and_said_once(calculator_repo: Path, tmp_path: Path) -> None:
    turns = [
        chat_text("Let me run the tests first.\n" + fenced("run_bash", command=TEST_COMMAND)),
        chat_text(f"<tool_call>\n{json.dumps({'name': 'edit_file', 'arguments': EDIT})}\n</tool_call>"),
        chat_text("All tests pass now: multiply multiplies."),
    ]
    record, api, shown = run_locally(calculator_repo, tmp_path / "out", turns, "openai")
    assert (record.status, record.steps, record.tool_calls) == ("completed", 3, 2)
    assert FIXED in (tmp_path / "out" / "patch.diff").read_text()
    calls = [e for e in events(tmp_path / "out") if e["type"] == "tool_call"]
    assert [c["name"] for c in calls] == ["run_bash", "edit_file"] and "failed" in calls[0]["output"]
    notes = [e["notes"] for e in events(tmp_path / "out") if e["type"] == "model_response"]
    assert notes == [[TEXT_CALL_NOTE], [TEXT_CALL_NOTE], []]
    assert shown.count("tool call parsed from text") == 1  # the terminal says it once
    # The model's prose stays; its call goes back to the server as a structured call, answered by a tool message.
    assistant = [m for m in api.requests[1]["messages"] if m["role"] == "assistant"][0]
    assert assistant["content"] == "Let me run the tests first."
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"command": TEST_COMMAND}
    assert api.requests[1]["messages"][-1]["role"] == "tool"


def test_reading_text_calls_can_be_turned_off(calculator_repo: Path, tmp_path: Path) -> None:
    record, _, _ = run_locally(calculator_repo, tmp_path / "out", [chat_text(fenced("run_bash", command="ls"))], "openai", text_tool_calls=False)
    assert (record.status, record.steps, record.tool_calls) == ("completed", 1, 0)


def test_an_unreadable_call_gets_one_correction_and_a_second_in_a_row_ends_the_run_as_stuck(calculator_repo: Path, tmp_path: Path) -> None:
    broken = '```json\n{"name": "run_bash", "arguments": {"command": "ls"\n```'
    turns = [chat_text(broken), chat_text(fenced("run_bash", command="ls")), chat_text(broken), chat_text(broken)]
    record, api, shown = run_locally(calculator_repo, tmp_path / "out", turns, "openai")
    assert (record.status, record.steps, record.tool_calls, record.exit_code) == ("stuck", 4, 1, 1)
    correction = api.requests[1]["messages"][-1]
    assert correction["role"] == "user" and "could not be read: the JSON of the tool call does not parse" in correction["content"]
    assert [e["rule"] for e in record.policy_events] == ["unreadable_calls"]
    assert "the model is told how to write one" in shown


def test_a_model_repeating_the_same_call_is_nudged_once_then_stopped_as_stuck_with_its_patch(calculator_repo: Path, tmp_path: Path) -> None:
    search = tool_use("search", pattern="nothing-matches-this")
    turns = [reply(FIX), *[reply(text("Searching."), search) for _ in range(6)], reply(text("never reached"))]
    record, api, shown = run_locally(calculator_repo, tmp_path / "out", turns, "openai", max_steps=20)
    assert (record.status, record.exit_code, record.steps) == ("stuck", 1, 5)  # the 4th identical call, well before max_steps
    assert FIXED in (tmp_path / "out" / "patch.diff").read_text()  # the work so far is exported
    assert [e["rule"] for e in record.policy_events] == ["limits.max_repeated_calls"]
    nudged = [m for m in api.requests[4]["messages"] if m["role"] == "user"][-1]["content"]
    assert "same search call 3 times in a row" in nudged
    assert sum("same search call" in json.dumps(r) for r in api.requests) == 1  # said once
    assert "■ stuck" in shown


def test_identical_calls_whose_results_differ_are_not_a_loop(calculator_repo: Path, tmp_path: Path) -> None:
    counter = tool_use("run_bash", command="echo x >> count.txt; wc -l < count.txt")
    record, _, _ = run_locally(calculator_repo, tmp_path / "out", [*[reply(counter) for _ in range(6)], reply(text("done"))], "openai")
    assert (record.status, record.tool_calls) == ("completed", 6)


def test_each_reply_is_bounded_and_a_server_refusing_max_tokens_gets_requests_without_it(calculator_repo: Path, tmp_path: Path) -> None:
    record, api, _ = run_locally(calculator_repo, tmp_path / "out", [reply(FIX), reply(text("done"))], "openai")
    assert record.status == "completed" and [r["max_tokens"] for r in api.requests] == [4096, 4096]  # the openai default
    out = tmp_path / "refused"
    record, api, _ = run_locally(
        calculator_repo, out, [reply(FIX), reply(text("done"))], "openai", server={"refuse_parameters": ["max_tokens"]}, max_reply_tokens=500
    )
    assert record.status == "completed" and len(api.refusals) == 1 and all("max_tokens" not in r for r in api.requests)
    assert api.refusals[0]["max_tokens"] == 500  # the policy's limit was what was sent


def test_a_huge_newest_result_against_llama_cpp_is_shortened_and_the_run_goes_on(calculator_repo: Path, tmp_path: Path) -> None:
    """The window is unknown (128k assumed); the 100 KB log read overflows llama.cpp's 6000; nothing old is there to trim."""
    (calculator_repo / "build.log").write_text("".join(f"2026-12-01 08:{i % 60:02d}:07 worker-{i % 7} step {i} ok\n" for i in range(2400)))
    turns = [reply(tool_use("read_file", path="build.log")), reply(text("The log shows every step ok."))]
    server = {"context_window": 6000, "llama_cpp": True, "models": ["qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"]}
    record, api, shown = run_locally(calculator_repo, tmp_path / "out", turns, "openai", server=server)
    assert record.status == "completed", record.error
    # Refused, then shortened to what the server said fits (the scripted server counts 4 characters a token, fewer
    # tokens than the estimate's, so it may take a second round); the step is then answered.
    trims = [e for e in events(tmp_path / "out") if e["type"] == "context_trimmed"]
    assert 1 <= len(api.refusals) == len(trims) <= 2
    assert all(t["window"] == 6000 and t["shortened"] and t["stubbed"] == [] for t in trims)
    sent = api.requests[-1]["messages"][-1]["content"]
    assert sent.startswith("     1\t2026-12-01 08:00:07") and "characters dropped" in sent  # head and tail, with the marker
    assert record.served_model == "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"  # what the server says it serves
    assert "new tool results shortened" in shown


def test_a_result_is_capped_relative_to_a_small_window_before_it_is_sent(calculator_repo: Path, tmp_path: Path) -> None:
    turns = [reply(tool_use("run_bash", command="seq 1 20000")), reply(text("done"))]
    record, api, _ = run_locally(calculator_repo, tmp_path / "out", turns, "openai", context_window=8000, server={"context_window": 8000})
    assert record.status == "completed" and api.refusals == []
    output = api.requests[1]["messages"][-1]["content"]
    assert "dropped" in output and len(output) < 0.25 * 8000 * 1.2  # digits run about a token each: ~a quarter of the room


def test_a_passing_verify_decides_success_whatever_stopped_the_agent(calculator_repo: Path, tmp_path: Path) -> None:
    turns = [reply(FIX), *[reply(tool_use("run_bash", command=f"echo {n}")) for n in range(5)]]
    record, _, _ = run_locally(calculator_repo, tmp_path / "out", turns, "openai", verify=TEST_COMMAND, max_steps=3)
    assert (record.status, record.exit_code) == ("max_steps", 0)
    assert record.verify is not None and record.verify.passed
    # The rule on the record: errors never succeed; the agent's own stops do when verify passes.
    passed, failed = VerifyRecord(command="t", exit_code=0, passed=True), VerifyRecord(command="t", exit_code=1)
    base = {"run_id": "r", "repo": "r", "task": "t", "model": "m", "started_at": "now"}
    for status, verify, code in [("budget_exceeded", passed, 0), ("stuck", passed, 0), ("max_steps", failed, 1), ("max_steps", None, 1),
                                 ("model_error", passed, 4), ("patch_rejected", passed, 1), ("interrupted", passed, 130), ("completed", None, 0)]:  # fmt: skip
        assert RunRecord(**base, status=status, verify=verify).exit_code == code, status


@pytest.mark.parametrize(
    ("message", "fields", "prompt", "window"),
    [
        # llama.cpp's server, with its own fields (the sample)
        ("request (32680 tokens) exceeds the available context size (16384 tokens), try increasing it", {"n_prompt_tokens": 32680, "n_ctx": 16384}, 32680, 16384),
        ("request (32680 tokens) exceeds the available context size (16384 tokens), try increasing it", {}, 32680, 16384),
        ("input (9000 tokens) is larger than the max context size (8192 tokens). skipping", {}, 9000, 8192),
        # vLLM
        ("This model's maximum context length is 4096 tokens and your request has 2778 input tokens (8000 > 4096 - 2778). None", {}, 2778, 4096),
        ("This model's maximum context length is 1536 tokens. However, your request has 4176 input tokens.", {}, 4176, 1536),
        ("This model's maximum context length is 32768 tokens. However, your messages resulted in 33000 tokens.", {}, 33000, 32768),
        # OpenAI
        ("This model's maximum context length is 128000 tokens. However, you requested 130000 tokens (126000 in the messages, 4000 in the completion).", {}, None, 128000),
        # Anthropic
        ("prompt is too long: 210000 tokens > 200000 maximum", {}, 210000, 200000),
        ("input length and `max_tokens` exceed context limit: 188240 + 21333 > 200000", {}, 188240, 200000),
        # Hugging Face TGI
        ("Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 4000 `inputs` tokens and 200 `max_new_tokens`", {}, 4000, 4096),
    ],
)  # fmt: skip
def test_every_servers_overflow_is_understood_with_its_numbers(message: str, fields: dict[str, int], prompt: int | None, window: int) -> None:
    error = api_error(400, message, window=fields.get("n_ctx"), prompt_tokens=fields.get("n_prompt_tokens"))
    assert isinstance(error, ContextOverflow)
    assert (error.prompt_tokens, error.window) == (prompt, window)


def test_other_errors_are_no_overflow() -> None:
    assert not isinstance(api_error(400, "Unsupported parameter: 'max_tokens'"), ContextOverflow)
    assert not isinstance(api_error(500, "request (9 tokens) exceeds the available context size (8 tokens)"), ContextOverflow)


def test_a_reply_room_too_large_for_a_learned_window_shrinks_and_the_same_prompt_is_sent_again() -> None:
    """vLLM: the prompt fits, the reply's max_tokens does not: nothing is trimmed, the reply's room shrinks."""
    context = ContextWindow(128_000, "system", max_reply_tokens=8000)
    messages = [Message(role="user", content=[Text(text="task")]), Message(role="user", content=[ToolResult(call_id="c", output="x " * 100)])]
    assert context.reply_tokens == 8000
    assert context.trim_after_overflow(messages, window=4096, prompt_tokens=2778) is None
    assert context.reply_tokens == 1024 and context.room == 3072


def test_the_token_estimate_follows_what_the_text_is_made_of_and_a_cut_fits() -> None:
    log = "".join(f"2026-12-01 08:{i % 60:02d}:07 [worker-{i % 4}] GET /api/items/{i * 7919} 200 {i % 97 / 10:.1f}ms\n" for i in range(500))
    prose = "The model only acts through tools that run in the container, and what comes back is treated as untrusted data. " * 50
    assert len(log) / estimate_tokens(log) < 2.0  # logs: under 2 characters a token, as Qwen's tokenizer counts them
    assert 3.0 < len(prose) / estimate_tokens(prose) < 6.0  # prose: about a word a token
    cut = cap_tokens(log, 1000)
    assert estimate_tokens(cut) <= 1000 and cut.startswith(log[:100]) and cut.endswith(log[-100:]) and "characters dropped" in cut
    assert cap_tokens(prose[:500], 1000) == prose[:500]
