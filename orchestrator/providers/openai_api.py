"""The OpenAI-compatible chat-completions adapter (vLLM, llama.cpp's server, Ollama, hosted providers).

It copes with what real servers do: several tool calls in one message, `arguments` that are not valid
JSON (answered as a tool error), tool calls without ids, `finish_reason` "stop" beside tool calls,
no `usage`, tool calls written as text in the message (read, see text_calls), and servers that refuse
`tool_choice`, `parallel_tool_calls` or `max_tokens` (dropped, then retried).
Requests that fail with 408/409/429/5xx are retried with backoff, honouring retry-after, within the run's deadline.
"""

from __future__ import annotations

import functools
import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import openai

from orchestrator.conversation import END_TURN, MAX_TOKENS, TOOL_USE, Message, Part, Reply, Text, ToolCall, Usage
from orchestrator.errors import ModelError
from orchestrator.providers.base import ContextOverflow, Provider, api_error
from orchestrator.providers.text_calls import find_text_calls
from orchestrator.tool_specs import TOOLS, tool_schemas

# Sent so servers behave the same way, but optional: a server that refuses one gets requests without it.
# max_tokens bounds a reply (a small model in a repetition loop otherwise writes until the context is full).
OPTIONAL_PARAMETERS = ("tool_choice", "parallel_tool_calls", "max_tokens", "temperature")
ERROR_PREFIX = "ERROR: "  # tool messages have no error flag: the model reads it from the text
TEXT_CALL_NOTE = "tool call parsed from text: the server returned none; see README for server templates"
MODELS_TIMEOUT_S = 5.0


class OpenAIProvider(Provider):
    name = "openai"
    # A reply of a coding step is rarely more than a file; a repetition loop is stopped after a few minutes even on a CPU.
    default_reply_tokens = 4096
    # Rendered once: the same bytes in every request.
    tools = [{"type": "function", "function": {"name": t["name"], "description": t["description"], "parameters": t["schema"]}} for t in tool_schemas()]

    def __init__(self, model: str, **options: Any) -> None:
        super().__init__(model, **options)
        self.optional = list(OPTIONAL_PARAMETERS)  # less what the server refused
        self._listed: str | None = None  # what the server's /v1/models says it serves
        self._text_calls = 0  # calls read from text so far: their ids are unique in the run

    def request(self, system: str, messages: list[Message], max_tokens: int) -> dict[str, Any]:
        rendered = [{"role": "system", "content": system}]
        for message in messages:
            rendered.extend(_render(message))
        values = {"tool_choice": "auto", "parallel_tool_calls": True, "max_tokens": max_tokens, "temperature": self.temperature}
        sent = {name: values[name] for name in self.optional if values[name] is not None}
        return {"model": self.model, "messages": rendered, "tools": self.tools, **sent}

    def complete(self, system: str, messages: list[Message], timeout: float, max_tokens: int) -> Reply:
        import openai

        notes: list[str] = []  # what had to be worked around, for the trajectory
        deadline = time.monotonic() + timeout
        while True:
            try:
                response = self.send(functools.partial(self.client.chat.completions.create, **self.request(system, messages, max_tokens)), deadline)
                break
            except openai.APIStatusError as exc:
                error, window, prompt_tokens = _api_message(exc)
                overflow = api_error(exc.status_code, error, window=window, prompt_tokens=prompt_tokens)
                if isinstance(overflow, ContextOverflow) or not (refused := self._refused_parameter(exc.status_code, error)):
                    raise overflow from None
                self.optional.remove(refused)
                notes.append(f"the server refused `{refused}`; sending requests without it ({error})")
            except openai.APIConnectionError as exc:
                raise ModelError(f"cannot reach the model API at {self.base_url}: {exc.__cause__ or exc}") from None
        if not response.choices:
            raise ModelError(f"the model API at {self.base_url} answered without any choice")
        self._reply_model = response.model or self._reply_model
        choice = response.choices[0]
        message = _parse(choice.message)
        unreadable = None
        if not message.tool_calls and message.text and self.text_tool_calls:
            message, unreadable = _calls_from_text(message.text, first_id=self._text_calls)
            if message.tool_calls:
                self._text_calls += len(message.tool_calls)
                notes.append(TEXT_CALL_NOTE)
        usage = _usage(response.usage)
        if usage is not None:
            self.usage.add(usage)
        stop_reason = _stop_reason(choice.finish_reason, message)
        return Reply(message=message, stop_reason=stop_reason, usage=usage, raw=response.model_dump(mode="json"), notes=notes, unreadable_call=unreadable)

    def served_model(self) -> str | None:
        """The one model the server lists when it lists one (llama.cpp serves its one model whatever name is asked,
        and copies the asked name into its replies), else the model field of the replies (a server with several
        models answers with, or refuses, the name asked)."""
        if self._listed is None and self._reply_model is not None:  # asked once, after the server has answered
            try:
                ids = [model.id for model in self.client.models.list(timeout=MODELS_TIMEOUT_S).data]
            except Exception:  # a server without /v1/models, or gone by now: the replies' field is what there is
                ids = []
            self._listed = ids[0] if len(ids) == 1 else ""
        return self._listed or self._reply_model

    def _refused_parameter(self, status: int, message: str) -> str | None:
        if status not in (400, 422):
            return None
        # vLLM, for one, words it '"auto" tool choice requires --enable-auto-tool-choice ...'.
        return next((name for name in self.optional if name in message or name.replace("_", " ") in message), None)


def _calls_from_text(text: str, first_id: int) -> tuple[Message, str | None]:
    """The reply, with the tool calls its text holds as calls (their text removed), and why a call-like text is unreadable."""
    found = find_text_calls(text, TOOLS)
    parts: list[Part] = [Text(text=found.remaining)] if found.remaining else []
    for index, (name, arguments) in enumerate(found.calls, start=first_id):
        parts.append(ToolCall(id=f"call_text_{index}", name=name, arguments=arguments, raw_arguments=json.dumps(arguments, ensure_ascii=False)))
    return Message(role="assistant", content=parts), found.failed


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


def _api_message(exc: openai.APIStatusError) -> tuple[str, int | None, int | None]:
    """The server's message, and the window and prompt size when it gives them as fields (llama.cpp: n_ctx, n_prompt_tokens)."""
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"], _count(error.get("n_ctx")), _count(error.get("n_prompt_tokens"))
    return str(exc.message), None, None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
