"""Tool calls a model wrote as text, because its server returned none.

Small and mid-size open models often answer with their call in the message text, in the form their
training used, and a server whose chat template does not turn that into `tool_calls` passes it on as
text. The forms found in the wild: a JSON object `{"name": TOOL, "arguments": {...}}` (or `parameters`,
or an OpenAI-style `{"function": {...}}`), alone, in a list, in a ``` or ```json fence, inside
`<tool_call>`, `<tools>` or `<function_call>` tags, after Mistral's `[TOOL_CALLS]` or Llama's
`<|python_tag|>`; Llama's `<function=TOOL>{...}</function>`; and tags all the way down,
`<function><name>TOOL</name><arguments>{...}</arguments></function>` or with attributes,
`<function name="TOOL" arguments='{...}'/>` (both seen from Qwen2.5-Coder-1.5B, inside `<tools>`).

A JSON object counts as a call only when its name is an offered tool and its arguments are an object, so
text that mentions a tool, or shows some other JSON, is not a call. A reply that looks like an attempt at
a call that cannot be read (a fence or tag whose JSON does not parse, a call-shaped object naming no
tool) is reported as such, so the model can be told once how to write it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

# Where a call's JSON may start: an object or list whose first key names the call.
_CALL_START = re.compile(r"[\[{]\s*\{?\s*\"(?:name|function|tool_name|type|arguments|parameters)\"\s*:")
# Wrappers whose content is meant to be a call; their JSON failing to parse is a failed attempt.
_WRAPPED = re.compile(
    r"```[ \t]*(?:json|tool_call|tool_code|tool|function)?[ \t]*\n(?P<fence>.*?)```"
    r"|<(?P<tag>tool_call|tools|function_call|tool_calls)>(?P<tagged>.*?)(?:</(?P=tag)>|$)",
    re.DOTALL,
)
_TAGGED_FUNCTIONS = (
    re.compile(r"<function=(?P<name>[\w.-]+)>(?P<args>.*?)</function>", re.DOTALL),
    re.compile(r"<function>\s*<name>\s*(?P<name>[\w.-]+)\s*</name>\s*<(?P<key>arguments|parameters)>(?P<args>.*?)</(?P=key)>\s*</function>", re.DOTALL),
    re.compile(r"<function\s+name=(?P<q1>[\"'])(?P<name>[\w.-]+)(?P=q1)\s+(?:arguments|parameters)=(?P<q2>[\"'])(?P<args>.*?)(?P=q2)\s*/?>", re.DOTALL),
)
_MARKERS = ("[TOOL_CALLS]", "<|python_tag|>")


@dataclass
class TextCalls:
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (tool name, arguments), in order
    remaining: str = ""  # the text without the calls: the model's prose
    failed: str | None = None  # why a reply that looks like a call could not be read as one


def find_text_calls(text: str, tools: Collection[str]) -> TextCalls:
    """The tool calls written in `text`, or why what looks like one is not."""
    found = TextCalls(remaining=text)
    spans: list[tuple[int, int]] = []
    functions = sorted((match for pattern in _TAGGED_FUNCTIONS for match in pattern.finditer(text)), key=lambda match: match.start())
    for function in functions:
        arguments = _loads(function["args"].strip() or "{}")
        if function["name"] in tools and isinstance(arguments, dict):
            found.calls.append((function["name"], arguments))
            spans.append(function.span())
    position = 0
    while match := _CALL_START.search(text, position):
        start = match.start()
        if any(a <= start < b for a, b in spans):
            position = start + 1
            continue
        try:
            value, end = json.JSONDecoder().raw_decode(text, start)
        except ValueError:
            position = start + 1
            continue
        calls, problem = _calls_in(value, tools)
        if calls:
            found.calls += calls
            spans.append((start, end))
        elif problem and found.failed is None:
            found.failed = problem
        position = end
    if not found.calls and found.failed is None:
        found.failed = _failed_wrapper(text, tools)
    if found.calls:
        found.failed = None
        found.remaining = _without(text, spans)
    return found


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _calls_in(value: Any, tools: Collection[str]) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
    """The calls in a decoded JSON value (an object or a list of them), or why a call-shaped one is not a call."""
    items = value if isinstance(value, list) else [value]
    calls, problem = [], None
    for item in items:
        call = _call(item)
        if call is None:
            continue
        name, arguments = call
        if name not in tools:
            problem = problem or f"{name!r} is not a tool (the tools are {', '.join(tools)})"
        elif not isinstance(arguments, dict):
            problem = problem or f"the arguments of {name!r} must be a JSON object"
        else:
            calls.append((name, arguments))
    return calls, problem


def _call(item: Any) -> tuple[str, Any] | None:
    """(name, arguments) of a call-shaped object, in any of the common layouts; None for other JSON."""
    if not isinstance(item, dict):
        return None
    if isinstance(item.get("function"), dict):  # {"type": "function", "function": {"name", "arguments"}}
        item = item["function"]
    name = item.get("name", item.get("tool_name"))
    if not isinstance(name, str):
        return None
    keys = [key for key in ("arguments", "parameters", "args", "input") if key in item]
    if not keys:
        return (name, None) if len(item) == 1 else None  # a bare {"name": TOOL} is a call missing its arguments
    arguments = item[keys[0]]
    if isinstance(arguments, str):  # OpenAI's wire form: the arguments as a JSON string
        arguments = _loads(arguments) if arguments.strip() else {}
    return name, arguments


def _failed_wrapper(text: str, tools: Collection[str]) -> str | None:
    """A fence or tag that is meant to hold a call but holds no readable one."""
    stripped = text.strip()
    for marker in _MARKERS:
        if marker in stripped:
            return f"the text after {marker} is not a JSON tool call"
    for match in _WRAPPED.finditer(text):
        content = (match["fence"] if match["fence"] is not None else match["tagged"] or "").strip()
        looks_like_call = content.startswith(("{", "[")) or match["tag"] is not None
        if looks_like_call and _loads(content) is None:
            return "the JSON of the tool call does not parse"
    if stripped.startswith("{") and '"name"' in stripped and _loads(stripped) is None:
        return "the JSON of the tool call does not parse"
    return None


def _without(text: str, spans: list[tuple[int, int]]) -> str:
    """The text with the calls cut out, and the fences, tags and markers left empty by that removed."""
    kept, position = [], 0
    for start, end in sorted(spans):
        kept.append(text[position:start])
        position = max(position, end)
    kept.append(text[position:])
    rest = "".join(kept)
    rest = re.sub(r"```[ \t]*\w*[ \t]*\n?\s*```", "", rest)
    rest = re.sub(r"<(tool_call|tools|function_call|tool_calls)>\s*</\1>", "", rest)
    for marker in _MARKERS:
        rest = rest.replace(marker, "")
    return rest.strip()
