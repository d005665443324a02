"""The tool server, run inside the sandbox: reads JSON requests on stdin, answers one JSON line each.

    python3 -E -s -B /opt/airlock/tools/server.py --root /workspace --max-output-bytes 30000 --command-timeout 120

It trusts nothing it is sent: a bad line, an unknown tool, a bad argument or a failing tool
becomes an error result, and the server reads on. It exits cleanly at the end of stdin.

Before the first request it puts itself out of the agent's commands' reach and makes itself their
subreaper, or under gVisor sweeps by uid (confine.py); its ready line says what held, and the host
refuses a server that is not protected as it asked.
The first line it reads is the channel's key: every later line in and out is signed with it
(protocol.py), and a request line without the host's signature, or a replayed one, is ignored.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, BinaryIO

import confine
import file_tools
import search
import shell
from protocol import KEY_LINE, PROTOCOL_VERSION, REPLY, REQUEST, BadRequest, encode_line, opened, parse_request, sign
from toolkit import Context, Result, Tool, ToolError


def ping(ctx: Context) -> Result:
    return Result("pong")


TOOLS: dict[str, Tool] = {tool.name: tool for tool in (Tool("ping", ping), *file_tools.TOOLS, *search.TOOLS, *shell.TOOLS)}


def handle(line: bytes, ctx: Context, last_id: int = 0) -> dict[str, Any] | None:
    """The response to one request payload (None for a replayed id); never raises for anything it contains."""
    try:
        request = parse_request(line)
    except BadRequest as exc:
        return _response(exc.request_id, Result(str(exc), is_error=True))
    except Exception as exc:  # e.g. MemoryError on an absurd line
        return _response(None, Result(f"malformed request: {type(exc).__name__}: {exc}", is_error=True))
    if request.id is not None and request.id <= last_id:  # a signed line seen before, written again
        return None
    return _response(request.id, dispatch(request.tool, request.args, ctx))


MAX_REPLY_CHARS = 1_000_000  # far below the host's limit on one reply line, whatever a tool returns


def dispatch(name: str, args: dict[str, Any], ctx: Context) -> Result:
    result = _run_tool(name, args, ctx)
    result.output = _valid_unicode(result.output)
    if len(result.output) > MAX_REPLY_CHARS:
        half = MAX_REPLY_CHARS // 2
        dropped = len(result.output) - 2 * half
        result.output = f"{result.output[:half]}\n[... {dropped} characters dropped ...]\n{result.output[-half:]}"
    return result


def _run_tool(name: str, args: dict[str, Any], ctx: Context) -> Result:
    tool = TOOLS.get(name)
    if tool is None:
        return Result(f"unknown tool {name!r}; available tools: {', '.join(sorted(TOOLS))}", is_error=True)
    try:
        return tool.run(ctx, **tool.bind(args))
    except ToolError as exc:
        return Result(str(exc), is_error=True)
    except Exception as exc:  # a bug or an unforeseen OS error must cost one result, not the server
        return Result(f"{type(exc).__name__}: {exc}", is_error=True)


def _response(request_id: int | None, result: Result) -> dict[str, Any]:
    return {"id": request_id, "output": _valid_unicode(result.output), "is_error": result.is_error, "meta": result.meta}


def _valid_unicode(text: str) -> str:
    """Lone surrogates (a file name that is not UTF-8, say) as visible escapes: the host takes only valid UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def serve(requests: BinaryIO, replies: BinaryIO, ctx: Context, key: bytes, protection: dict[str, object] | None = None) -> None:
    ready = {"id": 0, "ready": True, "protocol": PROTOCOL_VERSION, "python": sys.version, **(protection or {})}
    send(replies, key, ready)
    last_id = 0
    for line in requests:  # one at a time, in order, until end of file
        payload = opened(key, REQUEST, line)
        if payload is None:
            print("tool server: ignored a request line the host did not sign", file=sys.stderr, flush=True)
            continue
        if payload.strip() and (response := handle(payload, ctx, last_id)) is not None:
            last_id = max(last_id, response["id"] or 0)
            send(replies, key, response)


def send(replies: BinaryIO, key: bytes, message: dict[str, Any]) -> None:
    try:
        data = encode_line(message)
    except Exception as exc:  # a reply that cannot be encoded is a bug; the request still gets its line
        failure = Result(f"internal error: could not encode the reply: {type(exc).__name__}: {exc}", is_error=True)
        data = encode_line(_response(message.get("id"), failure))
    replies.write(sign(key, REPLY, data))
    replies.flush()


def _protocol_stdout() -> BinaryIO:
    """Keep the real stdout for protocol lines only; anything else written to fd 1 goes to stderr."""
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return replies


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="airlock's in-sandbox tool server (JSON lines on stdin/stdout)")
    parser.add_argument("--root", default="/workspace", help="the repository; relative paths start here")
    parser.add_argument("--max-output-bytes", type=int, default=30000, help="cap on a command's kept output")
    parser.add_argument("--command-timeout", type=float, default=120.0, help="longest a command may run (s)")
    parser.add_argument("--max-processes", type=int, default=None, help="RLIMIT_NPROC of every command (default: none)")
    parser.add_argument("--sweep", choices=confine.SWEEPS, default="tree", help="how what a command leaves is found and ended (see confine.py)")
    options = parser.parse_args(argv)
    if not os.path.isdir(options.root):
        parser.error(f"--root {options.root!r} is not a directory")
    if options.max_output_bytes < 64:
        parser.error("--max-output-bytes must be at least 64")
    if not options.command_timeout > 0:
        parser.error("--command-timeout must be positive")
    return options


def main(argv: list[str] | None = None) -> int:
    options = _parse_args(argv)
    ctx = Context(
        root=os.path.realpath(options.root),
        max_output_bytes=options.max_output_bytes,
        command_timeout=options.command_timeout,
        max_processes=options.max_processes,
    )
    protection = confine.protect(options.sweep)  # before any command runs, so none ever saw us reachable
    key_line = sys.stdin.buffer.readline()
    if not KEY_LINE.fullmatch(key_line):
        print("tool server: the first line must be the channel's key (64 hex digits)", file=sys.stderr)
        return 2
    replies = _protocol_stdout()
    try:
        serve(sys.stdin.buffer, replies, ctx, bytes.fromhex(key_line.decode("ascii").strip()), protection)
    except BrokenPipeError:  # the host went away: nobody is left to answer
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
