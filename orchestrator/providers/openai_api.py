"""The OpenAI-compatible chat-completions adapter (vLLM, llama.cpp's server, Ollama, hosted providers).

It copes with what real servers do: several tool calls in one message, `arguments` that are not valid
JSON (answered as a tool error), tool calls without ids, `finish_reason` "stop" beside tool calls,
no `usage`, and servers that refuse `tool_choice` or `parallel_tool_calls` (dropped, then retried).
The SDK retries 408/409/429/5xx with backoff, honouring retry-after. No max_tokens is sent: servers
bound the reply by the context left, and some refuse a max_tokens that does not fit.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import openai

from orchestrator.conversation import END_TURN, MAX_TOKENS, TOOL_USE, Message, Part, Reply, Text, ToolCall, Usage
from orchestrator.errors import ModelError
from orchestrator.providers.base import Provider, api_error
from orchestrator.tool_specs import tool_schemas

# Sent so servers behave the same way, but optional: a server that refuses one gets requests without it.
OPTIONAL_PARAMETERS = {"tool_choice": "auto", "parallel_tool_calls": True}
ERROR_PREFIX = "ERROR: "  # tool messages have no error flag: the model reads it from the text


class OpenAIProvider(Provider):
    name = "openai"
    # Rendered once: the same bytes in every request.
    tools = [{"type": "function", "function": {"name": t["name"], "description": t["description"], "parameters": t["schema"]}} for t in tool_schemas()]

    def __init__(self, model: str, **options: Any) -> None:
        super().__init__(model, **options)
        self.optional = dict(OPTIONAL_PARAMETERS)  # less what the server refused

    def request(self, system: str, messages: list[Message]) -> dict[str, Any]:
        rendered = [{"role": "system", "content": system}]
        for message in messages:
            rendered.extend(_render(message))
        return {"model": self.model, "messages": rendered, "tools": self.tools, **self.optional}

    def complete(self, system: str, messages: list[Message], timeout: float) -> Reply:
        import openai

        notes: list[str] = []  # what had to be worked around, for the trajectory
        while True:
            try:
                response = self.client.chat.completions.create(**self.request(system, messages), timeout=timeout)
                break
            except openai.APITimeoutError:
                raise TimeoutError from None
            except openai.APIStatusError as exc:
                error = _api_message(exc)
                if not (refused := self._refused_parameter(exc.status_code, error)):
                    raise api_error(exc.status_code, error) from None
                del self.optional[refused]
                notes.append(f"the server refused `{refused}`; sending requests without it ({error})")
            except openai.APIConnectionError as exc:
                raise ModelError(f"cannot reach the model API at {self.base_url}: {exc.__cause__ or exc}") from None
        if not response.choices:
            raise ModelError(f"the model API at {self.base_url} answered without any choice")
        choice = response.choices[0]
        message = _parse(choice.message)
        usage = _usage(response.usage)
        if usage is not None:
            self.usage.add(usage)
        return Reply(message=message, stop_reason=_stop_reason(choice.finish_reason, message), usage=usage, raw=response.model_dump(mode="json"), notes=notes)

    def _refused_parameter(self, status: int, message: str) -> str | None:
        if status not in (400, 422):
            return None
        # vLLM, for one, words it '"auto" tool choice requires --enable-auto-tool-choice ...'.
        return next((name for name in self.optional if name in message or name.replace("_", " ") in message), None)


def _render(message: Message) -> list[dict[str, Any]]:
    """One Message as chat messages: tool results become `tool` messages, right after the assistant's calls."""
    if message.role == "assistant":
        rendered: dict[str, Any] = {"role": "assistant", "content": message.text or (None if message.tool_calls else "")}
        if message.tool_calls:
            rendered["tool_calls"] = [
                {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": _arguments_text(call)}} for call in message.tool_calls
            ]
        return [rendered]
    results = [
        {"role": "tool", "tool_call_id": result.call_id, "content": ERROR_PREFIX + result.output if result.is_error else result.output}
        for result in message.tool_results
    ]
    texts = [part.text for part in message.content if isinstance(part, Text)]
    return results + ([{"role": "user", "content": "\n\n".join(texts)}] if texts else [])


def _arguments_text(call: ToolCall) -> str:
    return call.raw_arguments if call.raw_arguments is not None else json.dumps(call.arguments, ensure_ascii=False)


def _parse(message: Any) -> Message:
    parts: list[Part] = [Text(text=message.content)] if message.content else []
    for index, call in enumerate(message.tool_calls or []):
        function = getattr(call, "function", None)
        name = getattr(function, "name", None) or ""
        # Some servers send no id (or the same one twice); pairing results with calls needs a unique one.
        call_id = call.id if getattr(call, "id", None) and all(call.id != p.id for p in parts if isinstance(p, ToolCall)) else f"call_airlock_{index}"
        parts.append(_tool_call(call_id, name, getattr(function, "arguments", None)))
    return Message(role="assistant", content=parts)


def _tool_call(call_id: str, name: str, raw: Any) -> ToolCall:
    """A call whose arguments could not be read carries a `problem`, answered to the model as a tool error."""
    if isinstance(raw, dict):  # a few servers send an object rather than a JSON string
        return ToolCall(id=call_id, name=name, arguments=raw)
    text = raw if isinstance(raw, str) else ""
    try:
        arguments = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        return ToolCall(
            id=call_id,
            name=name,
            arguments={},
            raw_arguments=text,
            problem=f"The arguments are not valid JSON ({exc}). Send the call again with a JSON object.",
        )
    if not isinstance(arguments, dict):
        return ToolCall(id=call_id, name=name, arguments={}, raw_arguments=text, problem="The arguments must be a JSON object. Send the call again.")
    return ToolCall(id=call_id, name=name, arguments=arguments, raw_arguments=text)


def _stop_reason(finish_reason: str | None, message: Message) -> str:
    if finish_reason == "length":
        return MAX_TOKENS
    if message.tool_calls:  # Ollama and others say "stop" beside tool calls
        return TOOL_USE
    if finish_reason in (None, "stop", "tool_calls", "eos", "end_turn"):
        return END_TURN
    return finish_reason  # content_filter and the like end the run as a model error


def _usage(usage: Any) -> Usage | None:
    """The API's usage in Anthropic's sense: OpenAI counts cached tokens inside prompt_tokens."""
    if usage is None:
        return None
    details = getattr(usage, "prompt_tokens_details", None)
    cached = (getattr(details, "cached_tokens", None) or 0) if details is not None else 0
    prompt = getattr(usage, "prompt_tokens", None) or 0
    return Usage(input_tokens=max(0, prompt - cached), output_tokens=getattr(usage, "completion_tokens", None) or 0, cache_read_input_tokens=cached)


def _api_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
    return str(exc.message)
