"""The Anthropic Messages API adapter: one request per step, prompt caching, usage accounting.

The SDK reads ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL itself and retries 408/409/429/5xx/529 with
backoff (honouring retry-after); what still fails is a `ModelError` carrying the API's own message.
Importing the SDK takes over a second, so it happens on a background thread while the sandbox starts.
"""

from __future__ import annotations

import copy
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import anthropic
    from anthropic.types import Message

from orchestrator.errors import ModelError, UsageError

# A current Sonnet model (claude-sonnet-4-5 reaches end of life on 2026-11-30).
DEFAULT_MODEL = "claude-sonnet-5-5"
# Below the SDK's non-streaming ceiling (it refuses requests it expects to take over 10 minutes).
MAX_OUTPUT_TOKENS = 16_000
CACHE = {"type": "ephemeral"}


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def add(self, usage: Any) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + (getattr(usage, name, None) or 0))

    def total(self) -> int:
        return sum(vars(self).values())


def require_api_key() -> None:
    """Fail early, as bad input, when the SDK would have no credentials."""
    if not (os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN")):
        raise UsageError("ANTHROPIC_API_KEY is not set (export it, or try `airlock demo`, which needs no key)")


class AnthropicModel:
    def __init__(
        self, model: str, *, api_key: str | None = None, base_url: str | None = None, max_retries: int = 4, rate_limit_file: Path | None = None
    ) -> None:
        """`rate_limit_file`: a 429 backoff shared with the other runs of a batch (see orchestrator.backoff)."""
        self.model = model
        self.usage = Usage()
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="anthropic-import")
        self._client: Future[anthropic.Anthropic] = pool.submit(_make_client, api_key, base_url, max_retries, rate_limit_file)
        pool.shutdown(wait=False)

    @property
    def client(self) -> anthropic.Anthropic:
        return self._client.result()

    @property
    def base_url(self) -> str:
        return str(self.client.base_url)

    def request(self, system: str, tools: list[dict[str, Any]], messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The request body. Cache breakpoints: tools, system prompt, task (stable prefix), and the moving tail.

        The stored conversation is never modified: the tail marker is put on a copy of the last message,
        so earlier turns stay byte-identical from request to request and keep hitting the cache."""
        tools = [*tools[:-1], {**tools[-1], "cache_control": CACHE}] if tools else []
        task, *middle = messages
        marked = [_cache_marked(task)] if not middle else [_cache_marked(task), *middle[:-1], _cache_marked(middle[-1])]
        return {
            "model": self.model,
            "max_tokens": MAX_OUTPUT_TOKENS,
            "system": [{"type": "text", "text": system, "cache_control": CACHE}],
            "tools": tools,
            "messages": marked,
        }

    def complete(self, body: dict[str, Any], timeout: float) -> Message:
        import anthropic

        try:
            response = self.client.messages.create(**body, timeout=timeout)
        except anthropic.APITimeoutError:
            raise TimeoutError from None
        except anthropic.APIStatusError as exc:
            raise ModelError(f"model API error {exc.status_code}: {_api_message(exc)}") from None
        except anthropic.APIConnectionError as exc:
            raise ModelError(f"cannot reach the model API at {self.base_url}: {exc.__cause__ or exc}") from None
        self.usage.add(response.usage)
        return response


def _make_client(api_key: str | None, base_url: str | None, max_retries: int, rate_limit_file: Path | None) -> anthropic.Anthropic:
    import anthropic

    http_client = None
    if rate_limit_file is not None:
        from orchestrator.backoff import SharedBackoff

        # The SDK's own client defaults (timeouts, limits, keep-alive), plus the shared backoff's hooks.
        http_client = anthropic.DefaultHttpxClient(event_hooks=SharedBackoff(rate_limit_file).event_hooks())
    return anthropic.Anthropic(api_key=api_key, base_url=base_url, max_retries=max_retries, http_client=http_client)


def _cache_marked(message: dict[str, Any]) -> dict[str, Any]:
    """A copy of the message with a cache breakpoint on its last block."""
    marked = copy.deepcopy(message)
    if isinstance(marked["content"], str):
        marked["content"] = [{"type": "text", "text": marked["content"]}]
    marked["content"][-1]["cache_control"] = CACHE
    return marked


def _api_message(exc: anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return f"{error['message']} ({error.get('type', 'error')})"
    return str(exc.message)
