"""Keeping a long run inside the model's context window.

Turns are never rewritten while the conversation fits: rewriting an old turn invalidates the prompt
cache from that turn on. When the next request nears the window, the oldest tool results are replaced
by a short stub in one large step (down to half the window), so the cache is rebuilt once rather
than a little every turn. The results the model has not seen yet, and the newest ones it has, are kept.

The size of the next request is estimated from the last size the API reported plus the characters
added since; when the API refuses a request as too long anyway, its message corrects the estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.conversation import Message, ToolResult, Usage

TRIM_AT = 0.75  # of the window: a request estimated above this is trimmed first
TRIM_TO = 0.5  # ... down to this, so the next trim is many steps away
CHARS_PER_TOKEN = 3.5  # a cautious average for code and English (guessing high trims early, not late)
KEEP_SEEN = 2  # the newest results the model has seen stay whole: it is likely acting on them
STUB = "[old tool result removed to stay within the context window ({chars:,} characters); run the tool again if needed]"
DEFAULT_WINDOWS = {"anthropic": 200_000, "openai": 128_000}


def conversation_chars(messages: list[Message]) -> int:
    return sum(message.chars for message in messages)


@dataclass(frozen=True)
class Trim:
    reason: str
    stubbed: list[str]  # ids of the tool calls whose results were replaced
    tokens_before: int  # estimates
    tokens_after: int
    window: int


class ContextWindow:
    def __init__(self, tokens: int, fixed_chars: int) -> None:
        """`fixed_chars`: the system prompt and tool definitions, sent with every request."""
        self.tokens = tokens
        # Calibration: the prompt tokens of a request and the conversation's characters at the time.
        self._known_tokens, self._known_chars = int(fixed_chars / CHARS_PER_TOKEN), 0

    def estimate(self, messages: list[Message]) -> int:
        return self._estimate(conversation_chars(messages))

    def _estimate(self, chars: int) -> int:
        return self._known_tokens + int((chars - self._known_chars) / CHARS_PER_TOKEN)

    def observe(self, usage: Usage | None, sent: list[Message]) -> None:
        """The API reported the size of the request that sent `sent` (a server without usage reports nothing)."""
        if usage is not None and usage.prompt_tokens() > 0:
            self._known_tokens, self._known_chars = usage.prompt_tokens(), conversation_chars(sent)

    def trim_if_near(self, messages: list[Message]) -> Trim | None:
        if self.estimate(messages) <= TRIM_AT * self.tokens:
            return None
        return self._trim(messages, "the conversation neared the context window")

    def trim_after_overflow(self, messages: list[Message], window: int | None, prompt_tokens: int | None) -> Trim | None:
        """The API refused the request as too long: believe it, and trim; None if nothing is left to trim."""
        if window is not None and window < self.tokens:
            self.tokens = window
        self._known_tokens, self._known_chars = max(prompt_tokens or 0, self.tokens + 1), conversation_chars(messages)
        return self._trim(messages, "the API said the prompt was too long")

    def _trim(self, messages: list[Message], reason: str) -> Trim | None:
        chars = conversation_chars(messages)
        before, target = self._estimate(chars), TRIM_TO * self.tokens
        stubbed: list[str] = []
        # The last message holds the results the model has not seen yet.
        seen = [(number, index) for number, message in enumerate(messages[:-1]) for index, part in enumerate(message.content) if isinstance(part, ToolResult)]
        for number, index in seen[: max(0, len(seen) - KEEP_SEEN)]:
            if self._estimate(chars) <= target:
                break
            part = messages[number].content[index]
            if isinstance(part, ToolResult) and len(part.output) > len(STUB):
                stub = STUB.format(chars=len(part.output))
                content = list(messages[number].content)
                content[index] = part.model_copy(update={"output": stub})
                messages[number] = Message(role=messages[number].role, content=content)  # a new message: its size is new
                chars -= len(part.output) - len(stub)
                stubbed.append(part.call_id)
        if not stubbed:
            return None
        return Trim(reason=reason, stubbed=stubbed, tokens_before=before, tokens_after=self._estimate(chars), window=self.tokens)
