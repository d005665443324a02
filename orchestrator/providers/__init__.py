"""Model providers: one adapter per wire API, behind the one small interface the agent loop uses.

`anthropic` speaks the Anthropic Messages API (the default); `openai` speaks the OpenAI-compatible
chat-completions API that vLLM, llama.cpp's server, Ollama and hosted inference services serve.
Each adapter (orchestrator.providers.base.Provider) renders the loop's `Message`s into its API's request
and parses the answer into a `Reply`; each SDK is imported on a background thread, while the sandbox starts.
This module is the registry: adapters by name, imported only when chosen.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

from orchestrator.errors import UsageError
from orchestrator.providers.base import Provider

# name -> "module:class"; the name is also the SDK's module name.
ADAPTERS = {
    "anthropic": "orchestrator.providers.anthropic_api:AnthropicProvider",
    "openai": "orchestrator.providers.openai_api:OpenAIProvider",
}
PROVIDERS = tuple(ADAPTERS)
DEFAULT_PROVIDER = "anthropic"
# A current Sonnet model (claude-sonnet-4-5 reaches end of life on 2026-11-30).
DEFAULT_MODEL = "claude-sonnet-5-5"
KEY_VARIABLES = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
# Whether the API takes a sampling temperature, which attempts of one task then differ in: the Messages API
# of current Claude models takes none (the SDK has no such parameter); an OpenAI-compatible server that
# refuses it gets requests without it.
TAKES_TEMPERATURE = {"anthropic": False, "openai": True}


def resolve_api_key(provider: str, key_variable: str | None) -> str | None:
    """The key from the chosen variable; fails early, as bad input, when there is none.

    None means the SDK finds its own credentials (ANTHROPIC_AUTH_TOKEN for the Anthropic API)."""
    variable = key_variable or KEY_VARIABLES[provider]
    if key := os.environ.get(variable):
        return key
    if provider == "anthropic" and key_variable is None and os.environ.get("ANTHROPIC_AUTH_TOKEN"):
        return None
    if provider == "openai":
        raise UsageError(f"{variable} is not set (a local server that needs no key accepts any value, e.g. {variable}=none)")
    if key_variable is not None:
        raise UsageError(f"{variable} is not set (--api-key-env names the variable holding the API key)")
    raise UsageError(f"{variable} is not set (export it, or try `airlock demo`, which needs no key)")


def check_provider(provider: str) -> str:
    if provider not in PROVIDERS:
        raise UsageError(f"unknown provider {provider!r}: choose one of {', '.join(PROVIDERS)}")
    if provider == "openai" and not installed("openai"):
        raise UsageError("the openai provider needs the openai package: pip install 'airlock[openai]'")
    return provider


def installed(package: str) -> bool:
    """Without importing it: the import is slow, and happens on a background thread once the run starts."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # an import hook refused it, or a broken entry in sys.modules
        return False


def make_provider(
    provider: str, model: str, *, api_key: str | None, base_url: str | None = None, rate_limit_file: Path | None = None, text_tool_calls: bool = True
) -> Provider:
    """The adapter for `provider`, its SDK importing in the background. `rate_limit_file`: see orchestrator.providers.backoff;
    `text_tool_calls`: see orchestrator.providers.text_calls."""
    module, _, cls = ADAPTERS[check_provider(provider)].partition(":")
    adapter: type[Provider] = getattr(importlib.import_module(module), cls)
    return adapter(model, api_key=api_key, base_url=base_url, rate_limit_file=rate_limit_file, text_tool_calls=text_tool_calls)
