"""Keeping a long run inside the model's context window.

Turns are never rewritten while the conversation fits: rewriting an old turn invalidates the prompt
cache from that turn on. When the next request nears the window, the oldest tool results are replaced
by a short stub in one large step (down to half the window), so the cache is rebuilt once rather
than a little every turn. The results the model has not seen yet, and the newest ones it has, are kept.

Room is kept for the reply: the prompt may fill the window less the reply's token limit (at most a
quarter of the window), since servers count both. No single tool result may take more than a quarter of
that. The size of the next request is the last size the API reported plus an estimate (erring high, see
orchestrator.tokens) of what was added since, counted at the ratio of reported to estimated size seen so
far (at most 1, and at least a half: new text may be denser than the old), and so is what a trim removes.
When the API refuses a request as too long anyway, its message corrects the window, and if the newest
results alone are too long they are shortened.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.conversation import Message, ToolResult, Usage
from orchestrator.tokens import cap_tokens, estimate_tokens

TRIM_AT = 0.75  # of the prompt's room: a request estimated above this is trimmed first
TRIM_TO = 0.5  # ... down to this, so the next trim is many steps away
RESULT_SHARE = 0.25  # of the prompt's room: the most one tool result may take
REPLY_SHARE = 4  # the reply's room is at most a window divided by this
MIN_SCALE = 0.5  # new text is counted at no less than half its estimate, whatever the ratio seen so far
KEEP_SEEN = 2  # the newest results the model has seen stay whole: it is likely acting on them
MIN_RESULT_TOKENS = 200  # a result is not shortened below this
STUB = "[old tool result removed to stay within the context window ({chars:,} characters); run the tool again if needed]"
DEFAULT_WINDOWS = {"anthropic": 200_000, "openai": 128_000}


def conversation_tokens(messages: list[Message]) -> int:
    return sum(message.tokens for message in messages)


@dataclass(frozen=True)
class Trim:
    reason: str
    stubbed: list[str]  # ids of the tool calls whose results were replaced
    tokens_before: int  # estimates
    tokens_after: int
    window: int
    shortened: list[str] = field(default_factory=list)  # ids of the newest results cut to fit (head and tail kept)


class ContextWindow:
    def __init__(self, tokens: int, fixed_text: str, max_reply_tokens: int) -> None:
        """`fixed_text`: the system prompt and tool definitions, sent with every request."""
        self.tokens = tokens
        self.max_reply_tokens = max_reply_tokens
        # Calibration: the prompt tokens of a request and the conversation's estimate at the time.
        self._fixed = estimate_tokens(fixed_text)
        self._known_tokens, self._known_estimate = self._fixed, 0
        self._scale = 1.0  # reported tokens per estimated token (MIN_SCALE to 1), for what is added or removed

    @property
    def reply_tokens(self) -> int:
        """The reply's token limit for the next request: the configured one, at most a quarter of the window."""
        return max(1, min(self.max_reply_tokens, self.tokens // REPLY_SHARE))

    @property
    def room(self) -> int:
        """Tokens the prompt may take."""
        return self.tokens - self.reply_tokens

    @property
    def result_tokens(self) -> int:
        """The most one tool result may take."""
        return max(MIN_RESULT_TOKENS, int(RESULT_SHARE * self.room))

    def estimate(self, messages: list[Message]) -> int:
        return self._estimate(conversation_tokens(messages))

    def _estimate(self, conversation: int) -> int:
        return self._known_tokens + int((conversation - self._known_estimate) * self._scale)

    def observe(self, usage: Usage | None, sent: list[Message]) -> None:
        """The API reported the size of the request that sent `sent` (a server without usage reports nothing)."""
        if usage is not None and usage.prompt_tokens() > 0:
            self._known_tokens, self._known_estimate = usage.prompt_tokens(), conversation_tokens(sent)
            self._scale = max(MIN_SCALE, min(1.0, self._known_tokens / (self._fixed + self._known_estimate)))

    def trim_if_near(self, messages: list[Message]) -> Trim | None:
        if self.estimate(messages) <= TRIM_AT * self.room:
            return None
        return self._trim(messages, "the conversation neared the context window")

    def trim_after_overflow(self, messages: list[Message], window: int | None, prompt_tokens: int | None) -> Trim | None:
        """The API refused the request as too long: believe it, and trim; None if there is nothing old to trim.

        When the prompt itself fits the corrected window, only the reply's room was too large: the caller
        sees `reply_tokens` shrink and sends again."""
        if window is not None and window < self.tokens:
            self.tokens = window
        if prompt_tokens is not None and prompt_tokens <= self.room:
            self._known_tokens, self._known_estimate = prompt_tokens, conversation_tokens(messages)
            return self.trim_if_near(messages)
        self._known_tokens, self._known_estimate = max(prompt_tokens or 0, self.room + 1), conversation_tokens(messages)
        return self._trim(messages, "the API said the prompt was too long")

    def _trim(self, messages: list[Message], reason: str) -> Trim | None:
        size = before = self.estimate(messages)
        target = TRIM_TO * self.room
        stubbed: list[str] = []
        # The last message holds the results the model has not seen yet.
        seen = [(number, index) for number, message in enumerate(messages[:-1]) for index, part in enumerate(message.content) if isinstance(part, ToolResult)]
        for number, index in seen[: max(0, len(seen) - KEEP_SEEN)]:
            if size <= target:
                break
            part = messages[number].content[index]
            if isinstance(part, ToolResult) and len(part.output) > len(STUB):
                size += self._replace(messages, number, index, STUB.format(chars=len(part.output)))
                stubbed.append(part.call_id)
        if not stubbed:
            return None
        return Trim(reason=reason, stubbed=stubbed, tokens_before=before, tokens_after=size, window=self.tokens)

    def shorten_newest(self, messages: list[Message]) -> Trim | None:
        """Halve the largest of the newest results (head and tail kept) until the request fits; None if none can shrink."""
        size = before = self.estimate(messages)
        shortened: list[str] = []
        last = len(messages) - 1
        while size > self.room:
            results = [(estimate_tokens(p.output), i) for i, p in enumerate(messages[last].content) if isinstance(p, ToolResult)]
            largest, index = max(results, default=(0, -1))
            if largest <= MIN_RESULT_TOKENS:
                break
            part = messages[last].content[index]
            assert isinstance(part, ToolResult)
            size += self._replace(messages, last, index, cap_tokens(part.output, max(MIN_RESULT_TOKENS, largest // 2)))
            shortened.append(part.call_id)
        if not shortened:
            return None
        reason = "the newest tool results did not fit in the context window"
        return Trim(reason=reason, stubbed=[], tokens_before=before, tokens_after=size, window=self.tokens, shortened=list(dict.fromkeys(shortened)))

    def _replace(self, messages: list[Message], number: int, index: int, output: str) -> int:
        """Put `output` in place of a result (a new message: its size is new); returns the change in tokens, scaled."""
        old = messages[number]
        part = old.content[index]
        assert isinstance(part, ToolResult)
        content = list(old.content)
        content[index] = part.model_copy(update={"output": output})
        messages[number] = Message(role=old.role, content=content)
        return int((messages[number].tokens - old.tokens) * self._scale)
