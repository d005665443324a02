"""What stands in the way of the start-up and per-step goals, measured in the same run as the figures.

- start-up: a fresh interpreter importing one module and ending at once, less one importing nothing: the
  model SDK, docker-py and airlock's CLI, each on the critical path before the first model request; and
  on a big repo, the walk of its tree that the run makes before it starts (what to copy, what is hidden);
- a step: the model SDK's own work per request at the bench's conversation length (copying the request,
  JSON, parsing the reply into its types), that is `messages.create` against the scripted server less an
  HTTP POST of the same body, and the HTTP POST less the server's handling.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx2

from orchestrator.conversation import Message, Text, ToolCall, ToolResult
from orchestrator.policy.model import Policy
from orchestrator.providers.anthropic_api import AnthropicProvider
from orchestrator.providers.scripted import ScriptedModelServer, reply, tool_use
from orchestrator.run.agent import SYSTEM_PROMPT
from orchestrator.sandbox.repo_tar import scan_repo

REPEATS = 5
REQUESTS = 40


def import_seconds(module: str) -> float:
    """The median wall time a fresh interpreter spends importing `module` (its teardown skipped, as airlock's is)."""

    def once(code: str) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"{code}import os; os._exit(0)"], check=True)
        return time.perf_counter() - started

    return statistics.median(once(f"import {module}; ") - once("") for _ in range(REPEATS))


def scan_seconds(repo: Path) -> float:
    """The median time of the walk a run makes of `repo` before it starts, with the default policy's hidden paths."""
    hidden = Policy().paths.hidden
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        scan_repo(repo, hidden=hidden)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def conversation(steps: int) -> list[Message]:
    """The messages of a run `steps` steps in, each step a `run_bash true` and its result."""
    messages = [Message(role="user", content=[Text(text="bench")])]
    for step in range(steps):
        call_id = f"toolu_bench_{step:06d}"
        messages.append(Message(role="assistant", content=[ToolCall(id=call_id, name="run_bash", arguments={"command": "true"})]))
        messages.append(Message(role="user", content=[ToolResult(call_id=call_id, output="[exit code: 0]")]))
    return messages


def sdk_and_http_seconds(steps: int) -> tuple[float, float]:
    """Per request, `steps` steps into a run: the SDK's own time, and HTTP's to the local server (medians).

    The client runs in a process of its own, as airlock's does: beside the server, the two threads would
    wait for each other's turn with the interpreter lock."""
    with ScriptedModelServer([reply(tool_use("run_bash", command="true")) for _ in range(2 * REQUESTS + 1)]) as api:
        done = subprocess.run([sys.executable, "-m", "bench.breakdown", api.base_url, str(steps)], check=True, capture_output=True, text=True)
        through_sdk, through_http = json.loads(done.stdout)
        handling = api.handling[1:]  # after the first request, which made the connection
    sdk = statistics.median(took - server for took, server in zip(through_sdk, handling[0::2], strict=True))
    http = statistics.median(took - server for took, server in zip(through_http, handling[1::2], strict=True))
    return sdk - http, http


def _client(base_url: str, steps: int) -> None:
    """In the client's process: `messages.create` and a plain POST of the same body, in turns; prints their times."""
    messages = conversation(steps)
    provider = AnthropicProvider("claude-sonnet-4-5", api_key="bench", base_url=base_url)
    request = provider.request(SYSTEM_PROMPT, messages, 16_000)
    create = provider.client.messages.create
    create(**request)
    body = json.dumps(request).encode()
    headers = {"content-type": "application/json", "x-api-key": "bench", "anthropic-version": "2023-06-01"}
    through_sdk, through_http = [], []
    with httpx2.Client(base_url=base_url) as http:
        for _ in range(REQUESTS):
            started = time.perf_counter()
            create(**request)
            through_sdk.append(time.perf_counter() - started)
            started = time.perf_counter()
            http.post("/v1/messages", content=body, headers=headers).raise_for_status()
            through_http.append(time.perf_counter() - started)
    print(json.dumps([through_sdk, through_http]))


if __name__ == "__main__":
    _client(sys.argv[1], int(sys.argv[2]))
