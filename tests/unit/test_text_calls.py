"""Tool calls written as text: the forms real models write, what is not a call, and what is a failed attempt at one."""

from __future__ import annotations

import pytest

from orchestrator.providers.text_calls import find_text_calls
from orchestrator.tool_specs import TOOLS

PYTEST = {"command": "pytest calculator.py"}


@pytest.mark.parametrize(
    "text",
    [
        # Qwen2.5-Coder behind llama-server --jinja with its own template (the sample, verbatim)
        '```json\n{\n  "name": "run_bash",\n  "arguments": {\n    "command": "pytest calculator.py"\n  }\n}\n```',
        '```\n{"name": "run_bash", "arguments": {"command": "pytest calculator.py"}}\n```',
        '<tool_call>\n{"name": "run_bash", "arguments": {"command": "pytest calculator.py"}}\n</tool_call>',
        '<tools>\n{"name": "run_bash", "arguments": {"command": "pytest calculator.py"}}\n</tools>',
        '{"name": "run_bash", "arguments": {"command": "pytest calculator.py"}}',
        '{"name": "run_bash", "parameters": {"command": "pytest calculator.py"}}',  # Llama 3.1's JSON form
        '[{"name": "run_bash", "arguments": {"command": "pytest calculator.py"}}]',
        '[TOOL_CALLS] [{"name": "run_bash", "arguments": {"command": "pytest calculator.py"}}]',  # Mistral
        '<|python_tag|>{"name": "run_bash", "parameters": {"command": "pytest calculator.py"}}',  # Llama 3.x
        '{"type": "function", "function": {"name": "run_bash", "arguments": "{\\"command\\": \\"pytest calculator.py\\"}"}}',  # OpenAI's wire form
        '<function=run_bash>{"command": "pytest calculator.py"}</function>',  # Llama 3.1's custom form
        # Qwen2.5-Coder-1.5B behind llama-server, in a `make test-local-model` run (its sample, verbatim but the command)
        "<tools>\n  <function>\n    <name>run_bash</name>\n    <arguments>\n      {\n"
        '        "command": "pytest calculator.py"\n      }\n    </arguments>\n  </function>\n</tools>',
        '<function><name>run_bash</name><parameters>{"command": "pytest calculator.py"}</parameters></function>',
        '<tools>\n  <function name="run_bash" arguments=\'{"command": "pytest calculator.py"}\'/>\n</tools>',  # the same model, another run
        '<tool_call>\n{"arguments": {"command": "pytest calculator.py"}, "name": "run_bash"}\n</tool_call>',
    ],
)
def test_the_forms_found_in_the_wild_are_read_as_calls(text: str) -> None:
    found = find_text_calls(text, TOOLS)
    assert found.calls == [("run_bash", PYTEST)]
    assert found.failed is None
    assert found.remaining == ""  # nothing but the call: no fence, tag or marker left over


def test_prose_around_calls_is_kept_and_several_calls_are_read_in_order() -> None:
    text = (
        "First I will run the tests.\n"
        '<tool_call>\n{"name": "run_bash", "arguments": {"command": "pytest calculator.py"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "read_file", "arguments": {"path": "calculator.py"}}\n</tool_call>'
    )
    found = find_text_calls(text, TOOLS)
    assert found.calls == [("run_bash", PYTEST), ("read_file", {"path": "calculator.py"})]
    assert found.remaining == "First I will run the tests."


@pytest.mark.parametrize(
    "text",
    [
        "All tests pass. I fixed multiply with edit_file and checked it with run_bash.",  # mentions tools only
        'The config now reads:\n```json\n{"name": "calculator", "version": "1.0"}\n```',  # other JSON
        'package.json has {"name": "run_bash", "version": "2"} in it',  # a tool's name, but no arguments: not a call
        "```python\ndef multiply(a, b):\n    return a * b\n```",
        "",
    ],
)
def test_text_that_only_mentions_a_tool_or_shows_other_json_is_no_call_and_no_failed_attempt(text: str) -> None:
    found = find_text_calls(text, TOOLS)
    assert found.calls == [] and found.failed is None and found.remaining == text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('```json\n{"name": "run_bash", "arguments": {"command": "pytest"\n```', "does not parse"),  # cut off
        ('<tool_call>\n{"name": "run_bash", "arguments": {command: pytest}}\n</tool_call>', "does not parse"),
        ('```json\n{"name": "bash", "arguments": {"command": "pytest"}}\n```', "'bash' is not a tool"),
        ('{"name": "run_bash", "arguments": "pytest calculator.py"}', "must be a JSON object"),
        ('{"name": "run_bash"}', "must be a JSON object"),
        ("[TOOL_CALLS] run_bash pytest", "not a JSON tool call"),
    ],
)
def test_a_failed_attempt_at_a_call_says_why(text: str, problem: str) -> None:
    found = find_text_calls(text, TOOLS)
    assert found.calls == []
    assert found.failed is not None and problem in found.failed


def test_a_readable_call_wins_over_a_broken_one_beside_it() -> None:
    text = '```json\n{"name": "bash"}\n```\n```json\n{"name": "list_dir", "arguments": {}}\n```'
    found = find_text_calls(text, TOOLS)
    assert found.calls == [("list_dir", {})] and found.failed is None
