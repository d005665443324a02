"""A local HTTP model server that answers from a script, in both wire APIs airlock speaks.

It backs `airlock demo` (no API key needed), `airlock replay`, the benchmark and the test suite: the
real SDKs talk to it over HTTP, so the whole path from the agent loop to the wire is exercised.
It serves the Anthropic Messages API (POST /v1/messages) and the OpenAI chat-completions API
(POST /v1/chat/completions); each request consumes the next turn of the script, whichever API asked.

A turn is a `Scripted` reply (made with `reply(...)`, rendered into the API that asked), a raw response
body (a dict, served as is), an `ApiError`, a function of the request body returning one of those, or a
`Stall` holding the request unanswered for a while.
For several runs at once (`airlock batch`), the script can be a dict of scripts keyed by a marker:
a request goes to the script whose marker is in its first user message (the task text).

Token usage is estimated (4 characters a token). On the Messages API, prompt caching is simulated as
the API documents it: a prefix is written at each `cache_control` breakpoint, and read back when a
later request's breakpoint, or one of the 20 blocks before it, ends the same prefix.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ids = itertools.count(1)
ANTHROPIC, OPENAI = "/v1/messages", "/v1/chat/completions"
CACHE_LOOKBACK = 20  # blocks before a breakpoint that are checked for a cached prefix
MIN_CACHEABLE_TOKENS = 1024  # a shorter prefix is not cached
FINISH_REASONS = {"tool_use": "tool_calls", "end_turn": "stop", "max_tokens": "length"}


@dataclass
class ApiError:
    status: int
    message: str
    type: str = "api_error"
    headers: dict[str, str] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)  # more fields of the error object (llama.cpp's n_ctx, n_prompt_tokens)


@dataclass(frozen=True)
class Scripted:
    """A model reply in neutral terms: content blocks as the Messages API writes them."""

    content: list[dict[str, Any]]
    stop_reason: str
    usage: dict[str, int] | None = None  # replaces the estimate (Messages API names)
    omit_usage: bool = False  # answer without any usage, as some servers do


@dataclass(frozen=True)
class Stall:
    """A turn that leaves the request unanswered for `seconds` (or until the server stops), as a server busy with
    a long prompt does, then answers `then` if the client is still there."""

    seconds: float
    then: Scripted | dict[str, Any] | ApiError = field(default_factory=lambda: Scripted([text("answered after a stall")], "end_turn"))


Turn = Scripted | dict[str, Any] | ApiError | Stall | Callable[[dict[str, Any]], Scripted | dict[str, Any] | ApiError]


def reply(*blocks: dict[str, Any], stop_reason: str | None = None, usage: dict[str, int] | None = None, omit_usage: bool = False) -> Scripted:
    """A turn answering with these blocks; stop_reason defaults to tool_use if any block is one."""
    reason = stop_reason or ("tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn")
    return Scripted(list(blocks), reason, usage, omit_usage)


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def tool_use(name: str, **tool_input: Any) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_scripted_{next(_ids)}", "name": name, "input": tool_input}


def raw_tool_use(name: str, arguments: str) -> dict[str, Any]:
    """A tool call whose `arguments` string is sent as is on the chat-completions API (e.g. malformed JSON)."""
    return {"type": "tool_use", "id": f"toolu_scripted_{next(_ids)}", "name": name, "input": {}, "raw_arguments": arguments}


def chat_text(content: str, finish_reason: str = "stop") -> dict[str, Any]:
    """A raw chat-completions reply that is text only: how a small model behind a server whose chat template does not
    parse its tool calls answers, with the call written in the text (served as is, on that API only)."""
    message = {"role": "assistant", "content": content}
    usage = {"prompt_tokens": 1500, "completion_tokens": _tokens(content), "total_tokens": 1500 + _tokens(content)}
    choice = {"index": 0, "message": message, "finish_reason": finish_reason}
    return {"id": f"chatcmpl-scripted-{next(_ids)}", "object": "chat.completion", "created": 0, "model": "scripted", "choices": [choice], "usage": usage}


def _tokens(value: Any) -> int:
    return max(1, len(json.dumps(value)) // 4)


def _task_text(request: dict[str, Any]) -> str:
    users = [m for m in request.get("messages", []) if isinstance(m, dict) and m.get("role") == "user"]
    content = users[0].get("content", "") if users else ""
    return content if isinstance(content, str) else " ".join(block.get("text", "") for block in content if isinstance(block, dict))


def prompt_tokens(path: str, request: dict[str, Any]) -> int:
    """The estimated size of a request's prompt, as its usage reports it."""
    if path == OPENAI:
        return _tokens(request.get("messages", [])) + _tokens(request.get("tools", []))
    return sum(_tokens({k: v for k, v in block.items() if k != "cache_control"}) for block in _prompt_blocks(request))


class PromptCache:
    """The Messages API's prompt cache, by its documented rules, to report cache reads and writes."""

    def __init__(self) -> None:
        self._prefixes: set[str] = set()
        self._lock = threading.Lock()

    def usage(self, request: dict[str, Any]) -> dict[str, int]:
        blocks = _prompt_blocks(request)
        tokens = [_tokens({k: v for k, v in block.items() if k != "cache_control"}) for block in blocks]
        keys, running = [], hashlib.sha256()
        for block in blocks:
            running.update(json.dumps({k: v for k, v in block.items() if k != "cache_control"}, sort_keys=True).encode())
            keys.append(running.copy().hexdigest())
        breakpoints = [i for i, block in enumerate(blocks) if "cache_control" in block]
        with self._lock:
            hits = [p for b in breakpoints for p in range(b, max(-1, b - CACHE_LOOKBACK), -1) if keys[p] in self._prefixes]
            read_end = max(hits) + 1 if hits else 0
            write_end = max(breakpoints) + 1 if breakpoints and sum(tokens[: max(breakpoints) + 1]) >= MIN_CACHEABLE_TOKENS else 0
            for b in breakpoints:
                if sum(tokens[: b + 1]) >= MIN_CACHEABLE_TOKENS:
                    self._prefixes.add(keys[b])
        write_end = max(write_end, read_end)
        return {
            "input_tokens": sum(tokens[write_end:]),
            "cache_creation_input_tokens": sum(tokens[read_end:write_end]),
            "cache_read_input_tokens": sum(tokens[:read_end]),
        }


def _prompt_blocks(request: dict[str, Any]) -> list[dict[str, Any]]:
    """Tools, system blocks, then message blocks, in the order the cache prefix runs through them."""
    system = request.get("system") or []
    blocks = [*request.get("tools", []), *([{"type": "text", "text": system}] if isinstance(system, str) else system)]
    for message in request.get("messages", []):
        content = message.get("content")
        content = [{"type": "text", "text": content}] if isinstance(content, str) else content
        blocks += [{**block, "role": message.get("role")} for block in content]
    return blocks


def render_anthropic(turn: Scripted, request: dict[str, Any], cache: PromptCache) -> dict[str, Any]:
    content = [{k: v for k, v in block.items() if k != "raw_arguments"} for block in turn.content]
    usage = {**cache.usage(request), "output_tokens": _tokens(content), **(turn.usage or {})}
    return {
        "id": f"msg_scripted_{next(_ids)}", "type": "message", "role": "assistant", "model": request.get("model", "scripted"),
        "content": content, "stop_reason": turn.stop_reason, "stop_sequence": None, **({} if turn.omit_usage else {"usage": usage}),
    }  # fmt: skip


def render_openai(turn: Scripted, request: dict[str, Any]) -> dict[str, Any]:
    texts = [block["text"] for block in turn.content if block["type"] == "text"]
    calls = [
        {"id": block["id"], "type": "function", "function": {"name": block["name"], "arguments": block.get("raw_arguments", json.dumps(block["input"]))}}
        for block in turn.content
        if block["type"] == "tool_use"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    given = turn.usage or {}
    prompt = given.get("input_tokens", prompt_tokens(OPENAI, request)) + given.get("cache_read_input_tokens", 0)
    completion = given.get("output_tokens", _tokens(message))
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if given.get("cache_read_input_tokens"):
        usage["prompt_tokens_details"] = {"cached_tokens": given["cache_read_input_tokens"]}
    return {
        "id": f"chatcmpl-scripted-{next(_ids)}", "object": "chat.completion", "created": int(time.time()), "model": request.get("model", "scripted"),
        "choices": [{"index": 0, "message": message, "finish_reason": FINISH_REASONS.get(turn.stop_reason, turn.stop_reason)}],
        **({} if turn.omit_usage else {"usage": usage}),
    }  # fmt: skip


class ScriptedModelServer:
    """Serve the turns in order on 127.0.0.1; `requests` keeps every request body received.

    `paths`, `times` and `markers` run parallel to `requests`: which API was asked, when (time.monotonic())
    and which script answered (None for a plain list of turns). `refuse_parameters`: request keys the
    chat-completions endpoint rejects with a 400, as some servers do with `tool_choice`; no turn is used.
    `context_window`: a request whose prompt is larger gets the API's "too long" 400 instead; no turn is used.
    `models`: what GET /v1/models lists (as llama.cpp's server lists its one model); not served when None.
    `llama_cpp`: the chat-completions endpoint words its "too long" error as llama.cpp's server does."""

    def __init__(
        self,
        turns: Iterable[Turn] | Mapping[str, Iterable[Turn]],
        *,
        refuse_parameters: Iterable[str] = (),
        context_window: int | None = None,
        models: Iterable[str] | None = None,
        llama_cpp: bool = False,
    ) -> None:
        self._routed = isinstance(turns, Mapping)
        self._scripts: dict[str | None, list[Turn]] = (
            {marker: list(script) for marker, script in turns.items()} if isinstance(turns, Mapping) else {None: list(turns)}
        )
        self._refused = tuple(refuse_parameters)
        self._window = context_window
        self._models = None if models is None else list(models)
        self._llama_cpp = llama_cpp
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # ends the stalls
        self.cache = PromptCache()
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.times: list[float] = []
        self.handling: list[float] = []  # seconds each request took to answer here (what a benchmark subtracts)
        self.markers: list[str | None] = []
        self.refusals: list[dict[str, Any]] = []  # requests refused for a parameter or for their length
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        """For the Anthropic SDK, which adds /v1/messages itself."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def openai_base_url(self) -> str:
        """For the OpenAI SDK, whose base URL ends with the API version."""
        return self.base_url + "/v1"

    def __enter__(self) -> ScriptedModelServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def for_marker(self, marker: str) -> list[tuple[float, dict[str, Any]]]:
        """(arrival time, body) of every request the script of `marker` answered."""
        return [(t, body) for t, body, m in zip(self.times, self.requests, self.markers, strict=True) if m == marker]

    def _route(self, request: dict[str, Any]) -> str | None:
        if not self._routed:
            return None
        text = _task_text(request)
        # The longest marker that matches, so "task-1" does not catch the requests of "task-12".
        found = [marker for marker in self._scripts if marker is not None and marker in text]
        return max(found, key=len) if found else None

    def _next(self, path: str, request: dict[str, Any]) -> dict[str, Any] | ApiError:
        if path == OPENAI and (refused := [name for name in self._refused if name in request]):
            self.refusals.append(request)
            return ApiError(400, f"Unsupported parameter: '{refused[0]}' is not supported by this server", "invalid_request_error")
        if self._window is not None and (size := prompt_tokens(path, request)) > self._window:
            self.refusals.append(request)
            if path == OPENAI and self._llama_cpp:
                message = f"request ({size} tokens) exceeds the available context size ({self._window} tokens), try increasing it"
                return ApiError(400, message, "exceed_context_size_error", fields={"n_prompt_tokens": size, "n_ctx": self._window})
            if path == OPENAI:
                message = f"This model's maximum context length is {self._window} tokens. However, your messages resulted in {size} tokens."
                return ApiError(400, message, "invalid_request_error")
            return ApiError(400, f"prompt is too long: {size} tokens > {self._window} maximum", "invalid_request_error")
        with self._lock:
            marker = self._route(request)
            self.requests.append(request)
            self.paths.append(path)
            self.times.append(time.monotonic())
            self.markers.append(marker)
            turns = self._scripts.get(marker)
            if turns is None:
                return ApiError(400, "no script of the scripted model matches this task", "invalid_request_error")
            if not turns:
                return ApiError(400, "the scripted model has no more replies", "invalid_request_error")
            turn = turns.pop(0)
        if isinstance(turn, Stall):
            self._stopping.wait(turn.seconds)
            turn = turn.then
        outcome = turn(request) if callable(turn) else turn
        if isinstance(outcome, Scripted):
            return render_openai(outcome, request) if path == OPENAI else render_anthropic(outcome, request, self.cache)
        return outcome

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body are two writes: with Nagle's algorithm on, the body waits for the client's
            # delayed ACK of the headers (40 ms a reply on Linux), which a real API server never costs.
            disable_nagle_algorithm = True

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.split("?")[0] != "/v1/models" or api._models is None:
                    return self._send(404, {"error": {"type": "not_found_error", "message": self.path, "code": 404}})
                self._send(200, {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "scripted"} for name in api._models]})

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                started = time.perf_counter()
                try:
                    self._answer()
                finally:
                    api.handling.append(time.perf_counter() - started)

            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                path = self.path.split("?")[0]
                if path not in (ANTHROPIC, OPENAI):
                    return self._send(404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}})
                api.headers.append({name.lower(): value for name, value in self.headers.items()})
                outcome = api._next(path, json.loads(body))
                if isinstance(outcome, ApiError):
                    error = {"type": outcome.type, "message": outcome.message, **outcome.fields}
                    payload = {"error": {**error, "code": None}} if path == OPENAI else {"type": "error", "error": error}
                    return self._send(outcome.status, payload, outcome.headers)
                self._send(200, outcome)

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (a stall outlasted its timeout)
                    self.close_connection = True

            def log_message(self, *args: object) -> None:  # keep the terminal for the run's own trace
                pass

        return Handler
