"""The Anthropic Messages API adapter: one request per step, prompt caching, usage accounting.

The SDK reads ANTHROPIC_BASE_URL (and ANTHROPIC_AUTH_TOKEN) itself. Requests failing with 408/409/429/5xx/529
are retried with backoff, honouring retry-after, within the run's deadline; what still fails is a `ModelError`
carrying the API's own message.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import anthropic

from orchestrator.conversation import MAX_TOKENS, Message, Part, Reply, Text, ToolCall, ToolResult, Usage
from orchestrator.errors import ModelError
from orchestrator.providers.base import Provider, api_error
from orchestrator.tool_specs import tool_schemas

CACHE = {"type": "ephemeral"}


class AnthropicProvider(Provider):
    name = "anthropic"
    # Below the SDK's non-streaming ceiling (it refuses requests it expects to take over 10 minutes).
    default_reply_tokens = 16_000
    # Rendered once: the same bytes in every request.
    tools = [{"name": t["name"], "description": t["description"], "input_schema": t["schema"]} for t in tool_schemas()]

    def request(self, system: str, messages: list[Message], max_tokens: int) -> dict[str, Any]:
        """The request body. Cache breakpoints: tools, system prompt, task (the stable prefix), and the moving tail.

        Messages are rendered afresh each time and only the copy is marked, so earlier turns stay
        byte-identical from request to request and keep hitting the cache."""
        tools = [*self.tools[:-1], {**self.tools[-1], "cache_control": CACHE}]
        rendered = [_render(message) for message in messages]
        for marked in {0, len(rendered) - 1}:  # the task, and the tail (the same message on the first step)
            rendered[marked]["content"][-1]["cache_control"] = CACHE
        return {
            "model": self.model,
            "max_tokens": max_tokens,
            "system": [{"type": "text", "text": system, "cache_control": CACHE}],
            "tools": tools,
            "messages": rendered,
        }

    def complete(self, system: str, messages: list[Message], timeout: float, max_tokens: int) -> Reply:
        import anthropic

        create = functools.partial(self.client.messages.create, **self.request(system, messages, max_tokens))
        try:
            response = self.send(create, time.monotonic() + timeout)
        except anthropic.APIStatusError as exc:
            raise api_error(exc.status_code, _api_message(exc)) from None
        except anthropic.APIConnectionError as exc:
            raise ModelError(f"cannot reach the model API at {self.base_url}: {exc.__cause__ or exc}") from None
        self._reply_model = response.model or self._reply_model
        usage = None
        if response.usage is not None:
            usage = Usage()
            usage.add(response.usage)  # cache counts may be None
            self.usage.add(usage)
        stop = response.stop_reason or ""
        # A reply the context window cut short is a cut-off reply: the conversation is trimmed before the next request.
        stop = MAX_TOKENS if stop == "model_context_window_exceeded" else stop
        return Reply(message=_parse(response.content), stop_reason=stop, usage=usage, raw=response.model_dump(mode="json"))


def _render(message: Message) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, Text):
            if part.text:  # the API refuses empty text blocks
                blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ToolCall):
            blocks.append({"type": "tool_use", "id": part.id, "name": part.name, "input": part.arguments})
        elif isinstance(part, ToolResult):
            blocks.append({"type": "tool_result", "tool_use_id": part.call_id, "content": part.output, "is_error": part.is_error})
    return {"role": message.role, "content": blocks or [{"type": "text", "text": "(empty reply)"}]}


def _parse(content: list[Any]) -> Message:
    parts: list[Part] = []
    for block in content:
        if block.type == "text":
            parts.append(Text(text=block.text))
        elif block.type == "tool_use":
            arguments = block.input if isinstance(block.input, dict) else {}
            problem = None if isinstance(block.input, dict) else "The tool input must be a JSON object."
            parts.append(ToolCall(id=block.id, name=block.name, arguments=arguments, problem=problem))
    return Message(role="assistant", content=parts)


def _api_message(exc: anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return f"{error['message']} ({error.get('type', 'error')})"
    return str(exc.message)
