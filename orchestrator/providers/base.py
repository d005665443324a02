"""What every provider adapter shares: the `Provider` the agent loop talks to, its SDK client made in
the background, and the errors a model API can end a request with."""

from __future__ import annotations

import importlib
import re
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from orchestrator.conversation import Message, Reply, Usage
from orchestrator.errors import ModelError


class ContextOverflow(ModelError):
    """The API refused the request as longer than the model's context window.

    `window` and `prompt_tokens` are what the API's message said, when it said them."""

    def __init__(self, message: str, *, window: int | None = None, prompt_tokens: int | None = None) -> None:
        super().__init__(message)
        self.window, self.prompt_tokens = window, prompt_tokens


_OVERFLOW = re.compile(r"prompt is too long|context (length|window|size|limit)|maximum context|too many tokens", re.IGNORECASE)


def api_error(status: int, message: str) -> ModelError:
    """The error for a failed request, a ContextOverflow when the message says the prompt was too long."""
    text = f"model API error {status}: {message}"
    if status not in (400, 413, 422) or not _OVERFLOW.search(message):
        return ModelError(text)
    # Anthropic: "prompt is too long: 210000 tokens > 200000 maximum"; with max_tokens: "188240 + 21333 > 200000".
    if match := re.search(r"(\d+) tokens > (\d+) maximum", message):
        return ContextOverflow(text, prompt_tokens=int(match[1]), window=int(match[2]))
    if match := re.search(r"(\d+) \+ (\d+) > (\d+)", message):
        return ContextOverflow(text, prompt_tokens=int(match[1]), window=int(match[3]) - int(match[2]))
    # OpenAI and vLLM: "This model's maximum context length is 32768 tokens. However, you requested ..."
    match = re.search(r"maximum context length is (\d+)", message)
    return ContextOverflow(text, window=int(match[1]) if match else None)


def sdk_client(sdk: str, api_key: str | None, base_url: str | None, max_retries: int, rate_limit_file: Path | None) -> Future[Any]:
    """The SDK's client (`anthropic.Anthropic` or `openai.OpenAI`), made on a background thread.

    `rate_limit_file`: the SDK's own HTTP client defaults plus the hooks of a backoff shared with the other
    runs of a batch (see orchestrator.providers.backoff). Both SDKs retry with backoff themselves, honouring retry-after."""

    def make() -> Any:
        module = importlib.import_module(sdk)
        http_client = None
        if rate_limit_file is not None:
            from orchestrator.providers.backoff import SharedBackoff

            http_client = module.DefaultHttpxClient(event_hooks=SharedBackoff(rate_limit_file).event_hooks())
        client_class = module.Anthropic if sdk == "anthropic" else module.OpenAI
        return client_class(api_key=api_key, base_url=base_url, max_retries=max_retries, http_client=http_client)

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{sdk}-import")
    future = pool.submit(make)
    pool.shutdown(wait=False)
    return future


class Provider:
    """What the agent loop uses of a model, whichever API: each adapter subclasses this and adds `complete`.

    It holds the model's name, the usage summed over its replies, and the SDK client made in the background."""

    name: str  # the provider, which is also the SDK's module name

    def __init__(
        self, model: str, *, api_key: str | None = None, base_url: str | None = None, max_retries: int = 4, rate_limit_file: Path | None = None
    ) -> None:
        self.model = model
        self.usage = Usage()
        self._client = sdk_client(self.name, api_key, base_url, max_retries, rate_limit_file)

    @property
    def client(self) -> Any:
        return self._client.result()

    @property
    def base_url(self) -> str:
        return str(self.client.base_url)

    def complete(self, system: str, messages: list[Message], timeout: float) -> Reply:
        """One model turn; raises TimeoutError, ContextOverflow or ModelError."""
        raise NotImplementedError
