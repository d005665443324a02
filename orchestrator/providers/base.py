"""What every provider adapter shares: the `Provider` the agent loop talks to, its SDK client made in
the background, and the errors a model API can end a request with."""

from __future__ import annotations

import gc
import importlib
import re
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.conversation import Message, Reply, Usage
from orchestrator.errors import ModelError
from orchestrator.providers.backoff import SharedBackoff, call_within, retry_delay

T = TypeVar("T")


class ContextOverflow(ModelError):
    """The API refused the request as longer than the model's context window.

    `window` and `prompt_tokens` are what the API's message said, when it said them."""

    def __init__(self, message: str, *, window: int | None = None, prompt_tokens: int | None = None) -> None:
        super().__init__(message)
        self.window, self.prompt_tokens = window, prompt_tokens


_OVERFLOW = re.compile(
    r"prompt is too long|context (length|window|size|limit)|maximum context|too many tokens|`inputs` tokens|exceed_context_size", re.IGNORECASE
)
# Each server's wording, with the numbers it gives: (pattern, group of the prompt's tokens, group of the window).
_OVERFLOW_NUMBERS = [
    # Anthropic: "prompt is too long: 210000 tokens > 200000 maximum"
    (re.compile(r"(\d+) tokens > (\d+) maximum"), 1, 2),
    # llama.cpp: "request (32680 tokens) exceeds the available context size (16384 tokens), try increasing it",
    # and "input (32680 tokens) is larger than the max context size (16384 tokens)"
    (re.compile(r"\((\d+) tokens\) (?:exceeds the available|is larger than the max) context size \((\d+) tokens\)"), 1, 2),
    # vLLM: "This model's maximum context length is 4096 tokens and your request has 2778 input tokens (8000 > 4096 - 2778)",
    # "... However, your request has 4176 input tokens", "... However, your messages resulted in 33000 tokens"
    (re.compile(r"maximum context length is (\d+) tokens.*?(?:request has|messages resulted in) (\d+)(?: input)? tokens", re.DOTALL), 2, 1),
    # Hugging Face TGI: "`inputs` tokens + `max_new_tokens` must be <= 4096. Given: 4000 `inputs` tokens and 200 `max_new_tokens`"
    (re.compile(r"must be <= (\d+)\. Given: (\d+) `inputs` tokens"), 2, 1),
]


def api_error(status: int, message: str, *, window: int | None = None, prompt_tokens: int | None = None) -> ModelError:
    """The error for a failed request, a ContextOverflow when the message says the prompt was too long.

    `window` and `prompt_tokens`: numbers the server gave in fields of its error (llama.cpp's n_ctx and
    n_prompt_tokens); otherwise they are read from its message when it says them."""
    text = f"model API error {status}: {message}"
    if status not in (400, 413, 422) or not _OVERFLOW.search(message):
        return ModelError(text)
    # Anthropic, when the reply's max_tokens is what does not fit: "188240 + 21333 > 200000" (prompt + reply > window):
    # the window left for the prompt is the difference, as the reply's room is counted on the side.
    if match := re.search(r"(\d+) \+ (\d+) > (\d+)", message):
        return ContextOverflow(text, prompt_tokens=prompt_tokens or int(match[1]), window=window or int(match[3]))
    for pattern, prompt_group, window_group in _OVERFLOW_NUMBERS:
        if match := pattern.search(message):
            return ContextOverflow(text, prompt_tokens=prompt_tokens or int(match[prompt_group]), window=window or int(match[window_group]))
    # OpenAI: "This model's maximum context length is 32768 tokens. However, you requested 33000 tokens (...)"
    match = re.search(r"maximum context length is (\d+)", message)
    return ContextOverflow(text, prompt_tokens=prompt_tokens, window=window or (int(match[1]) if match else None))


def _import_without_collecting(name: str) -> Any:
    """Import a model SDK, whose some hundred thousand new objects live as long as the process: with the
    collector off meanwhile, and those objects frozen out of its reach after, it does not walk them again
    and again (measured: CLI start to the first model request 10-15% shorter)."""
    gc.disable()
    try:
        return importlib.import_module(name)
    finally:
        gc.freeze()
        gc.enable()


def sdk_client(sdk: str, api_key: str | None, base_url: str | None, shared: SharedBackoff | None) -> Future[Any]:
    """The SDK's client (`anthropic.Anthropic` or `openai.OpenAI`), made on a background thread.

    It does not retry: `Provider.send` does, within the run's deadline (see orchestrator.providers.backoff).
    `shared`: the SDK's own HTTP client defaults plus the hook recording 429s in a backoff shared with the
    other runs of a batch."""

    def make() -> Any:
        module = importlib.import_module(sdk) if sdk in sys.modules else _import_without_collecting(sdk)
        http_client = None if shared is None else module.DefaultHttpxClient(event_hooks=shared.event_hooks())
        client_class = module.Anthropic if sdk == "anthropic" else module.OpenAI
        return client_class(api_key=api_key, base_url=base_url, max_retries=0, http_client=http_client)

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{sdk}-import")
    future = pool.submit(make)
    pool.shutdown(wait=False)
    return future


class Provider:
    """What the agent loop uses of a model, whichever API: each adapter subclasses this and adds `complete`.

    It holds the model's name, the usage summed over its replies, and the SDK client made in the background."""

    name: str  # the provider, which is also the SDK's module name
    default_reply_tokens: int  # one reply's token limit unless the policy sets one

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        max_retries: int = 4,
        rate_limit_file: Path | None = None,
        text_tool_calls: bool = True,
    ) -> None:
        """`max_retries`: tries after the first of a failed request the API says may be retried;
        `text_tool_calls`: read tool calls a model wrote as text when the server returned none (see text_calls)."""
        self.model = model
        self.temperature: float | None = None  # None: the API's default (an attempt of several may set its own: see TAKES_TEMPERATURE)
        self.usage = Usage()
        self.text_tool_calls = text_tool_calls
        self.max_retries = max_retries
        self._shared = None if rate_limit_file is None else SharedBackoff(rate_limit_file)
        self._reply_model: str | None = None  # the model field of the newest reply
        self._client = sdk_client(self.name, api_key, base_url, self._shared)

    @property
    def client(self) -> Any:
        return self._client.result()

    def wait_until_loaded(self) -> None:
        """Wait for the SDK's import and client (whose error, if any, the first request raises)."""
        wait([self._client])

    @property
    def base_url(self) -> str:
        return str(self.client.base_url)

    def served_model(self) -> str | None:
        """The model that actually answered, as the API says (the requested name may be an alias, or ignored); None if unknown."""
        return self._reply_model

    def complete(self, system: str, messages: list[Message], timeout: float, max_tokens: int) -> Reply:
        """One model turn of at most `max_tokens` tokens within `timeout` seconds, retries included;
        raises TimeoutError, ContextOverflow or ModelError."""
        raise NotImplementedError

    def send(self, request: Callable[..., T], deadline: float) -> T:
        """`request(timeout=...)` (an SDK call), retried as the API allows, ending by `deadline` (a time.monotonic() value).

        Raises TimeoutError when the deadline passes, else the SDK's error of the last try."""
        sdk = importlib.import_module(self.name)

        def delay(error: Exception, retries_done: int) -> float | None:
            if isinstance(error, sdk.APITimeoutError):  # it had all the time left
                return None
            if isinstance(error, sdk.APIStatusError):
                return retry_delay(error.status_code, error.response.headers, retries_done)
            if isinstance(error, sdk.APIConnectionError):
                return retry_delay(None, {}, retries_done)
            return None

        try:
            return call_within(lambda left: request(timeout=left), deadline, max_retries=self.max_retries, delay=delay, shared=self._shared)
        except sdk.APITimeoutError:
            raise TimeoutError from None
