"""The conversation as the agent loop keeps it, the same whichever wire API carries it.

Each provider adapter renders these messages into its API's request and parses its API's response
back into a `Reply`; the loop, the trajectory and the context trimming only ever see these types.
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.tokens import estimate_tokens

# Why the model stopped, in the loop's words (each adapter maps its API's values onto these).
END_TURN, TOOL_USE, MAX_TOKENS = "end_turn", "tool_use", "max_tokens"


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True)


class Text(_Part):
    type: Literal["text"] = "text"
    text: str


class ToolCall(_Part):
    type: Literal["tool_call"] = "tool_call"
    id: str
    name: str
    arguments: dict[str, Any]
    # The arguments exactly as the API sent them, when it sends a JSON string (OpenAI-compatible APIs):
    # sent back verbatim in later requests, so the model sees what it wrote.
    raw_arguments: str | None = None
    # Why the arguments could not be read (malformed JSON): the call is answered with this as an error.
    problem: str | None = None


class ToolResult(_Part):
    type: Literal["tool_result"] = "tool_result"
    call_id: str
    output: str
    is_error: bool = False


Part = Annotated[Text | ToolCall | ToolResult, Field(discriminator="type")]
PER_MESSAGE, PER_PART = 4, 8  # tokens of a message's and a part's framing (role, ids, the template's markers)


def _part_text(part: Text | ToolCall | ToolResult) -> str:
    if isinstance(part, Text):
        return part.text
    if isinstance(part, ToolCall):
        return part.name + (part.raw_arguments if part.raw_arguments is not None else json.dumps(part.arguments, ensure_ascii=False))
    return part.output


class Message(BaseModel):
    # A turn, once made, is never changed (trimming makes a new one in its place, never a model_copy, which
    # would copy the cached size), so its size is computed once: every step sums the whole conversation's.
    model_config = ConfigDict(frozen=True)

    role: Literal["user", "assistant"]
    content: list[Part]

    @functools.cached_property
    def tokens(self) -> int:
        """The message's estimated size in tokens (see orchestrator.tokens): what the context-window estimate counts."""
        return PER_MESSAGE + sum(PER_PART + estimate_tokens(_part_text(part)) for part in self.content)

    @property
    def text(self) -> str:
        return "\n".join(part.text for part in self.content if isinstance(part, Text))

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [part for part in self.content if isinstance(part, ToolCall)]

    @property
    def tool_results(self) -> list[ToolResult]:
        return [part for part in self.content if isinstance(part, ToolResult)]


class Usage(BaseModel):
    """Token counts, in the Anthropic sense: `input_tokens` excludes the cached tokens counted beside it."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def add(self, other: Any) -> None:
        """Add another usage (or anything with these attributes; a missing or None count adds 0)."""
        for name in Usage.model_fields:
            setattr(self, name, getattr(self, name) + (getattr(other, name, None) or 0))

    def prompt_tokens(self) -> int:
        """Everything the request's prompt held, cached or not."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    def total(self) -> int:
        return self.prompt_tokens() + self.output_tokens


class Reply(BaseModel):
    message: Message  # the assistant's turn
    stop_reason: str  # END_TURN, TOOL_USE, MAX_TOKENS, or the API's own value for anything else
    usage: Usage | None  # None when the server reported none
    raw: dict[str, Any]  # the response body as received, for the trajectory and for replay
    notes: list[str] = []  # what the adapter had to work around to get this reply
    # Why a reply that looks like an attempt at a tool call could not be read as one (None: it does not look like one).
    unreadable_call: str | None = None
