"""The file tools: read_file, write_file, edit_file and list_dir."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections import deque
from dataclasses import dataclass, field
from typing import BinaryIO

from toolkit import Context, Param, Result, Tool, ToolError

MAX_LINES = 2000
MAX_LINE_CHARS = 2000
_MAX_LINE_BYTES = 4 * MAX_LINE_CHARS + 4  # enough UTF-8 to hold MAX_LINE_CHARS + 1 characters
_BINARY_PROBE = 8192
_READ_CHUNK = 1 << 20
_SNIPPET_CONTEXT = 3
_SNIPPET_MAX_LINES = 40
_MAX_MATCH_LINES_SHOWN = 20
MAX_ENTRIES = 500


# --- read_file -------------------------------------------------------------------------------


def read_file(ctx: Context, path: str, start_line: int | None, end_line: int | None) -> Result:
    target = ctx.resolve(path)
    shown = ctx.show(target)
    if start_line is not None and end_line is not None and end_line < start_line:
        raise ToolError(f"end_line ({end_line}) is before start_line ({start_line})")
    first = start_line or 1
    last = first + MAX_LINES - 1  # a range is capped too, so one call cannot flood the context
    if end_line is not None:
        last = min(last, end_line)
    with _open_regular(target, shown) as f:
        probe = f.read(_BINARY_PROBE)
        if b"\0" in probe:
            size = os.fstat(f.fileno()).st_size
            raise ToolError(f"{shown} is a binary file ({size} bytes); inspect it with run_bash (e.g. xxd or file)")
        f.seek(0)
        rows = []
        number = 0
        while number < last:
            line = f.readline(_MAX_LINE_BYTES)
            if not line:
                break
            number += 1
            cut = _skip_rest_of_line(f, line)
            if number >= first:
                rows.append(_numbered(number, line.decode("utf-8", errors="replace"), cut))
        total = number + _count_remaining_lines(f)
    if total == 0:
        return Result("(empty file)", meta={"total_lines": 0})
    if first > total:
        raise ToolError(f"start_line {first} is past the end of {shown}, which has {_plural(total, 'line')}")
    output = "\n".join(rows)
    if number < total and (end_line is None or number < end_line):
        output += f"\n[{shown} has {total} lines; showed lines {first}-{number}. Pass start_line/end_line to read more.]"
    return Result(output, meta={"total_lines": total, "start_line": first, "end_line": number})


def _skip_rest_of_line(f: BinaryIO, line: bytes) -> bool:
    """If readline stopped at its size limit, consume the rest of that line; True if anything was cut."""
    if line.endswith(b"\n") or len(line) < _MAX_LINE_BYTES:
        return False
    while True:
        rest = f.readline(_READ_CHUNK)
        if not rest or rest.endswith(b"\n"):
            return True


def _count_remaining_lines(f: BinaryIO) -> int:
    count = 0
    last_byte = b"\n"
    while True:
        chunk = f.read(_READ_CHUNK)
        if not chunk:
            return count + (last_byte != b"\n")  # a final line without a newline still counts
        count += chunk.count(b"\n")
        last_byte = chunk[-1:]


def _numbered(number: int, line: str, cut: bool = False) -> str:
    """One line as `cat -n` shows it, without its line terminator, long lines shortened."""
    if line.endswith("\n"):
        line = line[:-1]
    if line.endswith("\r"):
        line = line[:-1]
    if cut or len(line) > MAX_LINE_CHARS:
        line = line[:MAX_LINE_CHARS] + f" [... line cut at {MAX_LINE_CHARS} characters]"
    return f"{number:>6}\t{line}"


def _open_regular(target: str, shown: str) -> BinaryIO:
    """Open a regular file for reading; anything else (directory, FIFO, device) is a clear error.

    O_NONBLOCK keeps a FIFO from blocking the server in open(); the check runs on the opened
    file, so nothing can be swapped in between.
    """
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        raise ToolError(f"file not found: {shown}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise ToolError(f"{shown} is a directory; use list_dir to see what it contains")
        raise ToolError(f"{shown} is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


# --- write_file and edit_file -------------------------------------------------------------------


def write_file(ctx: Context, path: str, content: str) -> Result:
    target = ctx.resolve(path)
    shown = ctx.show(target)
    data = content.encode("utf-8")  # exactly the content: no newline translation
    real = os.path.realpath(target)  # write through a symlink, as open() would
    try:
        existing = os.stat(real)
    except FileNotFoundError:
        existing = None
    except NotADirectoryError:
        raise ToolError(f"could not write {shown}: one of its parents is a file, not a directory") from None
    if existing is not None and stat.S_ISDIR(existing.st_mode):
        raise ToolError(f"{shown} is a directory")
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        raise ToolError(f"{shown} is not a regular file")
    try:
        os.makedirs(os.path.dirname(real), exist_ok=True)
        _replace(real, data, None if existing is None else existing.st_mode)
    except OSError as exc:  # e.g. ENOSPC: the old content, if any, is still there
        raise ToolError(f"could not write {shown}: {exc.strerror or exc}") from None
    lines = content.count("\n") + (1 if content and not content.endswith("\n") else 0)
    verb = "created" if existing is None else "overwrote"
    return Result(
        f"{verb} {shown} ({_plural(len(data), 'byte')}, {_plural(lines, 'line')})",
        meta={"created": existing is None, "bytes": len(data), "lines": lines},
    )


def edit_file(ctx: Context, path: str, old_str: str, new_str: str) -> Result:
    target = ctx.resolve(path)
    shown = ctx.show(target)
    if not old_str:
        raise ToolError("old_str is empty; give the exact text to replace (to create a file, use write_file)")
    if old_str == new_str:
        raise ToolError("old_str and new_str are identical; there is nothing to change")
    with _open_regular(target, shown) as f:
        raw = f.read()
        mode = os.fstat(f.fileno()).st_mode
    try:
        text = raw.decode("utf-8")  # strict, so that encoding it again gives back the same bytes
    except UnicodeDecodeError as exc:
        raise ToolError(f"{shown} is not valid UTF-8 (byte offset {exc.start}); edit_file only edits UTF-8 text: use write_file or run_bash instead") from None
    starts = _find_all(text, old_str)
    if not starts:
        raise ToolError(_not_found_message(shown, text, old_str))
    if len(starts) > 1:
        lines = [str(text.count("\n", 0, start) + 1) for start in starts[:_MAX_MATCH_LINES_SHOWN]]
        more = ", ..." if len(starts) > _MAX_MATCH_LINES_SHOWN else ""
        raise ToolError(
            f"old_str occurs {len(starts)} times in {shown} (at lines {', '.join(lines)}{more});"
            " include more surrounding context so that it matches exactly once"
        )
    start = starts[0]
    new_text = text[:start] + new_str + text[start + len(old_str) :]
    try:
        _replace(os.path.realpath(target), new_text.encode("utf-8"), mode)
    except OSError as exc:
        raise ToolError(f"could not write {shown}: {exc.strerror or exc}") from None
    first_line = text.count("\n", 0, start) + 1
    last_line = first_line + max(0, new_str.count("\n") - new_str.endswith("\n"))  # a final newline ends its line
    snippet = _snippet(new_text, first_line, last_line)
    return Result(f"edited {shown}; the result around the change:\n{snippet}", meta={"line": first_line})


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _find_all(text: str, sub: str) -> list[int]:
    """Every start of `sub` in `text`, overlapping ones included: each is a different edit."""
    starts = []
    index = text.find(sub)
    while index != -1:
        starts.append(index)
        index = text.find(sub, index + 1)
    return starts


def _not_found_message(shown: str, text: str, old_str: str) -> str:
    message = (
        f"old_str not found in {shown}. It must match the file exactly, including whitespace and"
        " indentation; read_file the region first and copy the text from there."
    )
    if "\r\n" in text and "\n" in old_str and "\r\n" not in old_str:
        message += " Note: this file has CRLF line endings, so each line of old_str must end in \\r\\n."
    return message


def _snippet(text: str, first_line: int, last_line: int) -> str:
    if not text:
        return "(the file is now empty)"
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()  # the final newline ends the last line; it does not start another
    start = max(1, first_line - _SNIPPET_CONTEXT)
    end = min(len(lines), last_line + _SNIPPET_CONTEXT)
    shown_end = min(end, start + _SNIPPET_MAX_LINES - 1)
    rows = [_numbered(n, lines[n - 1]) for n in range(start, shown_end + 1)]
    if shown_end < end:
        rows.append(f"[... {end - shown_end} more changed or context lines; read_file to see them]")
    return "\n".join(rows)


def _replace(target: str, data: bytes, mode: int | None) -> None:
    """Write `data` to a sibling temporary file, then rename it over `target`.

    A failed write (ENOSPC) so leaves the old file intact instead of truncated. `mode` is the
    existing file's, kept; a new file gets the usual 0o666 minus umask.
    """
    temporary = os.path.join(os.path.dirname(target), f".airlock-{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, "wb") as f:
            f.write(data)
        if mode is not None:
            os.chmod(temporary, stat.S_IMODE(mode))
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


# --- list_dir ----------------------------------------------------------------------------------


@dataclass
class _Node:
    label: str
    children: list[_Node] = field(default_factory=list)


def list_dir(ctx: Context, path: str, depth: int) -> Result:
    target = ctx.resolve(path)
    shown = ctx.show(target)
    try:
        mode = os.stat(target).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise ToolError(f"directory not found: {shown}") from None
    if not stat.S_ISDIR(mode):
        raise ToolError(f"{shown} is not a directory; use read_file to read it")
    top = _Node(shown.rstrip("/") + "/")
    listed, omitted = _walk(target, top, depth)
    lines: list[str] = []
    _render(top, 0, lines)
    if listed == 0:
        lines.append("  (empty directory)")
    if omitted:
        lines.append(f"[... {omitted} more entries not shown (limit {MAX_ENTRIES}); list a subdirectory or pass a smaller depth]")
    return Result("\n".join(lines), meta={"entries": listed, "omitted": omitted})


def _walk(directory: str, top: _Node, depth: int) -> tuple[int, int]:
    """Fill the tree breadth first, so that when the cap is hit the upper levels are complete.

    Returns (entries listed, entries omitted). Omitted directories are still walked, to count.
    """
    listed = omitted = 0
    pending: deque[tuple[str, _Node | None, int]] = deque([(directory, top, 1)])
    while pending:
        path, node, level = pending.popleft()
        try:
            with os.scandir(path) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError as exc:
            if node is top:
                raise
            if node is not None:
                node.children.append(_Node(f"[unreadable: {exc.strerror}]"))
            continue
        for entry in entries:
            child = None
            if node is not None and listed < MAX_ENTRIES:
                child = _Node(_label(entry))
                node.children.append(child)
                listed += 1
            else:
                omitted += 1
            # .git is shown but never entered; symlinked directories are not followed (no loops)
            if level < depth and entry.name != ".git" and entry.is_dir(follow_symlinks=False):
                pending.append((entry.path, child, level + 1))
    return listed, omitted


def _label(entry: os.DirEntry[str]) -> str:
    if entry.is_symlink():
        try:
            return f"{entry.name} -> {os.readlink(entry.path)}"
        except OSError:
            return f"{entry.name} -> ?"
    if entry.is_dir(follow_symlinks=False):
        return entry.name + "/"
    return entry.name


def _render(node: _Node, indent: int, lines: list[str]) -> None:
    lines.append("  " * indent + node.label)
    for child in node.children:
        _render(child, indent + 1, lines)


TOOLS = (
    Tool(
        "read_file",
        read_file,
        (Param("path", str), Param("start_line", int, None, minimum=1), Param("end_line", int, None, minimum=1)),
    ),
    Tool("write_file", write_file, (Param("path", str), Param("content", str))),
    Tool("edit_file", edit_file, (Param("path", str), Param("old_str", str), Param("new_str", str))),
    Tool("list_dir", list_dir, (Param("path", str, "."), Param("depth", int, 2, minimum=1, maximum=5))),
)
