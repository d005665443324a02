"""Check an untrusted git diff on the host before anything applies it. Pure Python, no git.

The sandbox produces the diff with `git diff --cached --binary --full-index -M ...`, but the
agent controls the sandbox, so every byte is treated as hostile. The parser is strict on
purpose: each section must consist only of lines we understand (git header lines, `---`/`+++`,
hunks whose line counts add up exactly, well-formed binary patches). Anything else makes the
section "unparseable", because bytes we skip over are bytes `git apply` might interpret.

Paths are kept as git gives them (bytes). `FileChange` carries them as `str` decoded with
UTF-8 + surrogateescape, so `os.fsencode()` gives the original bytes back; `display()` gives a
printable form for messages and run records.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ChangeKind = Literal["added", "modified", "deleted", "renamed", "copied", "mode-changed"]

SYMLINK_MODE = "120000"
GITLINK_MODE = "160000"
_VALID_MODES = {"100644", "100755", SYMLINK_MODE, GITLINK_MODE}

# Code points HFS+ ignores when comparing names (git's utf8.c next_hfs_char): ".g\u200cit" is ".git" there.
_HFS_IGNORABLE = frozenset([0x200C, 0x200D, 0x200E, 0x200F, 0xFEFF, *range(0x202A, 0x202F), *range(0x206A, 0x2070)])
_C_ESCAPES = {
    ord("a"): 7,
    ord("b"): 8,
    ord("f"): 12,
    ord("n"): 10,
    ord("r"): 13,
    ord("t"): 9,
    ord("v"): 11,
    ord("\\"): 92,
    ord('"'): 34,
}
_B85_CHARS = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&()*+-;<=>?@^_`{|}~")

_DIFF_GIT = b"diff --git "
_HUNK_RE = re.compile(rb"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@.*")
_INDEX_RE = re.compile(rb"index ([0-9a-f]{4,64})\.\.([0-9a-f]{4,64})(?: ([0-7]{6}))?")
_MODE_RE = re.compile(rb"[0-7]{6}")
_SCORE_RE = re.compile(rb"(?:dis)?similarity index \d{1,3}%")
_BINARY_HUNK_RE = re.compile(rb"(literal|delta) (\d+)")

UNPARSEABLE = "unparseable"
_ESCAPES = "path escapes the repository"
_DOTGIT = "writes inside .git"
_GITLINK = "submodule (gitlink) changes are not exported"
# A delta's result depends on the file it is applied to, so no reviewer can see it from the patch;
# airlock's own export writes every binary hunk as a literal (tools/baseline.py).
_BINARY_DELTA = "binary delta: what it writes depends on the old file, so it cannot be reviewed from the patch"


# ----------------------------------------------------------------------------- results


@dataclass
class FileChange:
    kind: ChangeKind
    old_path: str | None  # None for added files; surrogateescape-decoded
    new_path: str | None  # None for deleted files
    old_mode: str | None  # e.g. "100644"; None when the diff does not say
    new_mode: str | None
    binary: bool = False
    insertions: int = 0
    deletions: int = 0

    @property
    def path(self) -> str:
        return self.new_path if self.new_path is not None else self.old_path or ""

    def to_record(self) -> dict[str, object]:
        record = asdict(self)
        record["old_path"] = display_str(self.old_path)
        record["new_path"] = display_str(self.new_path)
        return record


@dataclass
class Refusal:
    path: str  # display form
    reason: str  # short and human
    detail: str = ""  # for "unparseable": what the parser tripped on


@dataclass
class CheckedPatch:
    patch: bytes  # the kept sections, byte-exact and in order
    changes: list[FileChange] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)

    def stats(self) -> dict[str, int]:
        return change_stats(self.changes)

    def to_record(self) -> dict[str, Any]:
        return {
            "stats": self.stats(),
            "changes": [c.to_record() for c in self.changes],
            "refused": [asdict(r) for r in self.refused],
        }


def change_stats(changes: list[FileChange]) -> dict[str, int]:
    """{"files_changed", "insertions", "deletions"} over `changes` (binary files count 0 lines)."""
    return {
        "files_changed": len(changes),
        "insertions": sum(c.insertions for c in changes),
        "deletions": sum(c.deletions for c in changes),
    }


class _Unparseable(Exception):
    """A section does not follow the format `git diff` produces."""


class _Refused(Exception):
    def __init__(self, path: bytes | str, reason: str) -> None:
        super().__init__(reason)
        self.path = path if isinstance(path, str) else display(path)
        self.reason = reason


# ----------------------------------------------------------------------------- names


def display(raw: bytes) -> str:
    """One-line printable form of a git path: invalid UTF-8 as \\xNN, control and invisible characters escaped."""
    text = raw.decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def display_str(path: str | None) -> str | None:
    """Printable form of a surrogateescape-decoded path."""
    return None if path is None else display(path.encode("utf-8", "surrogateescape"))


def _as_str(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "surrogateescape")


def c_unquote(data: bytes, start: int = 0) -> tuple[bytes, int]:
    """Decode a git C-quoted name starting at data[start] == '"'; return (name, index after the closing quote)."""
    if data[start : start + 1] != b'"':
        raise _Unparseable("expected a quoted name")
    out = bytearray()
    i = start + 1
    while i < len(data):
        ch = data[i]
        if ch == 0x22:  # closing quote
            return bytes(out), i + 1
        if ch != 0x5C:  # backslash
            out.append(ch)
            i += 1
            continue
        nxt = data[i + 1 : i + 2]
        if not nxt:
            break
        if nxt[0] in _C_ESCAPES:
            out.append(_C_ESCAPES[nxt[0]])
            i += 2
        elif re.fullmatch(rb"[0-3][0-7][0-7]", data[i + 1 : i + 4]):
            out.append(int(data[i + 1 : i + 4], 8))
            i += 4
        else:
            raise _Unparseable("bad escape in quoted name")
    raise _Unparseable("unterminated quoted name")


def _unquoted(name: bytes) -> bytes:
    """git quotes every name with a control character, so an unquoted one is malformed (and ambiguous)."""
    if any(b < 0x20 or b == 0x7F for b in name):
        raise _Unparseable("control character in an unquoted name")
    return name


def _strip_prefix(name: bytes, prefix: bytes) -> bytes:
    if not name.startswith(prefix):
        raise _Unparseable(f"name without {prefix.decode()} prefix")
    return name[len(prefix) :]


def _parse_header_names(rest: bytes) -> tuple[bytes, bytes] | None:
    """Names from `diff --git <a> <b>` (prefixes stripped); None when unquoted names are ambiguous."""
    if rest.startswith(b'"'):
        a, end = c_unquote(rest)
        if rest[end : end + 1] != b" ":
            raise _Unparseable("bad diff --git line")
        b_part = rest[end + 1 :]
        if b_part.startswith(b'"'):
            b, end_b = c_unquote(b_part)
            if end_b != len(b_part):
                raise _Unparseable("bad diff --git line")
        else:
            b = _unquoted(b_part)
        return _strip_prefix(a, b"a/"), _strip_prefix(b, b"b/")
    if rest.endswith(b'"'):
        # unquoted a, quoted b: the quoted name starts at the last ' "b/' that parses to the end.
        pos = rest.rfind(b' "')
        while pos > 0:
            try:
                b, end = c_unquote(rest, pos + 1)
                if end == len(rest):
                    return _strip_prefix(_unquoted(rest[:pos]), b"a/"), _strip_prefix(b, b"b/")
            except _Unparseable:
                pass
            pos = rest.rfind(b' "', 0, pos)
        raise _Unparseable("bad diff --git line")
    # Both unquoted: only decidable when old == new ("a/N b/N"), as git itself assumes.
    _unquoted(rest)
    if len(rest) % 2 == 1:
        n = (len(rest) - 5) // 2
        if n >= 0 and rest[:2] == b"a/" and rest[n + 2 : n + 5] == b" b/" and rest[2 : n + 2] == rest[n + 5 :]:
            return rest[2 : n + 2], rest[n + 5 :]
    return None


def _parse_plain_name(value: bytes) -> bytes:
    """A name on a rename/copy line: C-quoted or verbatim."""
    if value.startswith(b'"'):
        name, end = c_unquote(value)
        if end != len(value):
            raise _Unparseable("junk after quoted name")
        return name
    return _unquoted(value)


def _parse_file_line(value: bytes, prefix: bytes) -> bytes | None:
    """Name on a `---`/`+++` line; None for /dev/null. git appends a TAB to names with spaces."""
    if value.startswith(b'"'):
        name, end = c_unquote(value)
        if value[end:] not in (b"", b"\t"):
            raise _Unparseable("junk after quoted name")
        return _strip_prefix(name, prefix)
    value = _unquoted(value.split(b"\t", 1)[0])
    if value == b"/dev/null":
        return None
    return _strip_prefix(value, prefix)


# ----------------------------------------------------------------------------- path policy


def is_dotgit_like(component: bytes) -> bool:
    """True for `.git` and names that some filesystem treats as `.git` (case, NTFS, HFS+ tricks)."""
    name = component.decode("utf-8", "surrogateescape")
    name = "".join(ch for ch in name if ord(ch) not in _HFS_IGNORABLE)
    name = name.split(":", 1)[0]  # NTFS alternate data stream: ".git::$INDEX_ALLOCATION"
    name = name.rstrip(". ").lower()  # NTFS drops trailing dots and spaces
    return name in (".git", "git~1")


def path_problem(path: bytes) -> str | None:
    """Why a repo-relative path may not be written, or None when it is fine."""
    if b"\0" in path:
        return "path contains a NUL byte"
    if not path:
        return "empty path"
    if path.startswith(b"/"):
        return "absolute path"
    components = path.split(b"/")
    if b".." in components:
        return _ESCAPES
    if any(is_dotgit_like(c) for c in components):
        return _DOTGIT
    if any(c in (b"", b".") for c in components):
        return "invalid path"
    return None


def symlink_problem(link_path: bytes, target: bytes) -> str | None:
    """Why a symlink at `link_path` pointing to `target` is refused, or None when it stays inside the tree.

    Besides the lexical check, a `..` after a folder name is refused: that folder may itself be
    a symlink (e.g. `a -> ..`), and `a/..` would then leave the tree although it looks harmless.
    """
    shown = display(target)
    if not target or b"\0" in target:
        return "symlink has an invalid target"
    if target.startswith(b"/"):
        return f"symlink points outside the repository: {shown}"
    components = [c for c in target.split(b"/") if c not in (b"", b".")]
    if any(is_dotgit_like(c) for c in components):
        return f"symlink points into .git: {shown}"
    where = link_path.split(b"/")[:-1]  # real folders: git apply never writes through a symlink
    for i, component in enumerate(components):
        if component != b"..":
            continue
        if i > 0 and components[i - 1] != b"..":
            return f"symlink target goes up after a folder name: {shown}"
        if not where:
            return f"symlink points outside the repository: {shown}"
        where.pop()
    return None


# ----------------------------------------------------------------------------- section parsing


@dataclass
class _Hunk:
    old_start: int
    new_start: int
    lines: list[bytes]  # raw lines including their '\n'


@dataclass
class _Section:
    header_names: tuple[bytes, bytes] | None = None
    headers: dict[str, bytes] = field(default_factory=dict)
    minus: bytes | None = None
    plus: bytes | None = None
    has_file_lines: bool = False
    hunks: list[_Hunk] = field(default_factory=list)
    binary: bool = False
    binary_literal: bytes | None = None  # decoded forward literal, when there is one
    binary_delta: bool = False
    binary_reverse: bytes | None = None  # decoded reverse literal (the old content), when there is one
    binary_body: bool = False  # a GIT binary patch, not just "Binary files ... differ"


_HEADER_KEYS = (
    (b"old mode ", "old mode"),
    (b"new mode ", "new mode"),
    (b"deleted file mode ", "deleted file mode"),
    (b"new file mode ", "new file mode"),
    (b"rename from ", "rename from"),
    (b"rename to ", "rename to"),
    (b"copy from ", "copy from"),
    (b"copy to ", "copy to"),
)


def _split_lines(section: bytes) -> list[bytes]:
    """Lines with their '\\n'; only '\\n' separates lines in a diff (a '\\r' is content)."""
    if not section.endswith(b"\n"):
        raise _Unparseable("section does not end with a newline")
    return [ln + b"\n" for ln in section[:-1].split(b"\n")]


def _parse_section(section: bytes) -> _Section:
    lines = _split_lines(section)
    sec = _Section(header_names=_parse_header_names(lines[0][len(_DIFF_GIT) : -1]))
    i = 1
    while i < len(lines):
        line = lines[i][:-1]
        if line.startswith((b"--- ", b"GIT binary patch", b"Binary files ")):
            break
        i += 1
        if _SCORE_RE.fullmatch(line):
            _set_once(sec.headers, "score", line)
            continue
        if line.startswith(b"index "):
            _set_once(sec.headers, "index", line)
            if not _INDEX_RE.fullmatch(line):
                raise _Unparseable("bad index line")
            continue
        for prefix, key in _HEADER_KEYS:
            if line.startswith(prefix):
                _set_once(sec.headers, key, line[len(prefix) :])
                break
        else:
            raise _Unparseable(f"unexpected line {display(line[:60])!r}")
    if i == len(lines):
        return sec
    line = lines[i][:-1]
    if line.startswith(b"--- "):
        i = _parse_text_body(lines, i, sec)
    elif line == b"GIT binary patch":
        i = _parse_binary_body(lines, i + 1, sec)
    elif line.startswith(b"Binary files ") and line.endswith(b" differ"):
        sec.binary = True
        i += 1
    else:
        raise _Unparseable(f"unexpected line {display(line[:60])!r}")
    if i != len(lines):
        raise _Unparseable(f"unexpected line {display(lines[i][:60])!r}")
    return sec


def _set_once(headers: dict[str, bytes], key: str, value: bytes) -> None:
    if key in headers:
        raise _Unparseable(f"repeated {key} line")
    headers[key] = value


def _parse_text_body(lines: list[bytes], i: int, sec: _Section) -> int:
    if i + 1 >= len(lines) or not lines[i + 1].startswith(b"+++ "):
        raise _Unparseable("--- without +++")
    sec.minus = _parse_file_line(lines[i][4:-1], b"a/")
    sec.plus = _parse_file_line(lines[i + 1][4:-1], b"b/")
    sec.has_file_lines = True
    i += 2
    if i == len(lines):
        raise _Unparseable("no hunks after +++")
    while i < len(lines):
        i = _parse_hunk(lines, i, sec)
    return i


def _parse_hunk(lines: list[bytes], i: int, sec: _Section) -> int:
    match = _HUNK_RE.fullmatch(lines[i][:-1])
    if not match:
        raise _Unparseable(f"unexpected line {display(lines[i][:60])!r}")
    old_left = int(match[2]) if match[2] is not None else 1
    new_left = int(match[4]) if match[4] is not None else 1
    hunk = _Hunk(old_start=int(match[1]), new_start=int(match[3]), lines=[])
    i += 1
    while old_left > 0 or new_left > 0:
        if i == len(lines):
            raise _Unparseable("hunk shorter than its header says")
        line = lines[i]
        tag = line[:1]
        if tag in (b" ", b"\n"):  # git apply also takes an empty line as empty context
            old_left -= 1
            new_left -= 1
        elif tag == b"-":
            old_left -= 1
        elif tag == b"+":
            new_left -= 1
        elif _is_no_newline_marker(line, hunk):
            pass
        else:
            raise _Unparseable(f"unexpected line in hunk {display(line[:60])!r}")
        if old_left < 0 or new_left < 0:
            raise _Unparseable("hunk longer than its header says")
        hunk.lines.append(line)
        i += 1
    if i < len(lines) and _is_no_newline_marker(lines[i], hunk):
        hunk.lines.append(lines[i])
        i += 1
    if not hunk.lines:
        raise _Unparseable("empty hunk")
    sec.hunks.append(hunk)
    return i


def _is_no_newline_marker(line: bytes, hunk: _Hunk) -> bool:
    """'\\ No newline at end of file' (text may be translated); it only ever follows a content line."""
    return line.startswith(b"\\ ") and bool(hunk.lines) and hunk.lines[-1][:1] != b"\\"


def _parse_binary_body(lines: list[bytes], i: int, sec: _Section) -> int:
    sec.binary = sec.binary_body = True
    for n in range(2):  # forward hunk, then the optional reverse hunk
        if n == 1 and i == len(lines):
            break
        match = _BINARY_HUNK_RE.fullmatch(lines[i][:-1]) if i < len(lines) else None
        if not match:
            raise _Unparseable("bad binary patch")
        i += 1
        data = bytearray()
        while i < len(lines) and lines[i] != b"\n":
            data += _decode_b85_line(lines[i][:-1])
            i += 1
        if i == len(lines) or not data:
            raise _Unparseable("bad binary patch")
        i += 1  # the blank line ending the hunk
        if n == 0:
            if match[1] == b"delta":
                sec.binary_delta = True
            else:
                sec.binary_literal = _inflate(bytes(data), int(match[2]))
        elif match[1] == b"literal":
            sec.binary_reverse = _inflate(bytes(data), int(match[2]))
    return i


def _decode_b85_line(line: bytes) -> bytes:
    """One line of git's base85: a length char (A-Z = 1..26, a-z = 27..52) then 5 chars per 4 bytes."""
    if not line:
        raise _Unparseable("bad binary patch line")
    c = line[0]
    size = c - 64 if 65 <= c <= 90 else c - 96 + 26 if 97 <= c <= 122 else 0
    body = line[1:]
    if size == 0 or len(body) != (size + 3) // 4 * 5 or not set(body) <= _B85_CHARS:
        raise _Unparseable("bad binary patch line")
    try:
        return base64.b85decode(body)[:size]
    except ValueError as exc:
        raise _Unparseable("bad binary patch line") from exc


def _inflate(data: bytes, size: int) -> bytes | None:
    """Inflate a literal binary hunk; None when it is not valid (git apply will reject it then)."""
    try:
        out = zlib.decompress(data)
    except zlib.error:
        return None
    return out if len(out) == size else None


# ----------------------------------------------------------------------------- section checking


def _mode(value: bytes | None) -> str | None:
    if value is None:
        return None
    if not _MODE_RE.fullmatch(value) or value.decode() not in _VALID_MODES:
        raise _Unparseable(f"unsupported file mode {display(value)}")
    return value.decode()


def _resolve_names(sec: _Section) -> tuple[bytes | None, bytes | None, ChangeKind]:
    """(old path, new path, kind-ish) from header, rename/copy and ---/+++ lines, cross-checked."""
    h = sec.headers
    is_new, is_deleted = "new file mode" in h, "deleted file mode" in h
    if is_new and is_deleted:
        raise _Unparseable("both new and deleted")
    renamed = "rename from" in h or "rename to" in h
    copied = "copy from" in h or "copy to" in h
    old: bytes | None
    new: bytes | None
    kind: ChangeKind
    if renamed or copied:
        if renamed and copied or is_new or is_deleted:
            raise _Unparseable("conflicting header lines")
        src_key, dst_key = ("rename from", "rename to") if renamed else ("copy from", "copy to")
        if src_key not in h or dst_key not in h:
            raise _Unparseable(f"{src_key} without {dst_key}")
        old, new = _parse_plain_name(h[src_key]), _parse_plain_name(h[dst_key])
        if sec.header_names is not None and sec.header_names != (old, new):
            raise _Unparseable("diff --git line disagrees with rename/copy lines")
        kind = "renamed" if renamed else "copied"
    else:
        if sec.header_names is not None:
            old, new = sec.header_names
        elif sec.has_file_lines:
            old = new = sec.plus if sec.plus is not None else sec.minus
        else:
            raise _Unparseable("cannot tell the file name")
        if old != new or old is None:
            raise _Unparseable("old and new names differ without rename")
        kind = "added" if is_new else "deleted" if is_deleted else "modified"
    if sec.has_file_lines:
        want_minus = None if is_new else old
        want_plus = None if is_deleted else new
        if (sec.minus, sec.plus) != (want_minus, want_plus):
            raise _Unparseable("---/+++ lines disagree with the header")
    return (None if is_new else old), (None if is_deleted else new), kind


def _modes(sec: _Section) -> tuple[str | None, str | None]:
    """(old mode, new mode) the way git apply ends up with them."""
    h = sec.headers
    index = _INDEX_RE.fullmatch(h["index"]) if "index" in h else None
    index_mode = _mode(index[3]) if index and index[3] else None
    old = _mode(h.get("old mode") or h.get("deleted file mode"))
    new = _mode(h.get("new mode") or h.get("new file mode"))
    if ("old mode" in h) != ("new mode" in h):
        raise _Unparseable("old mode without new mode")
    if "old mode" in h and ("new file mode" in h or "deleted file mode" in h):
        raise _Unparseable("conflicting mode lines")
    if index_mode is not None:
        if "new file mode" in h:
            if index_mode != new:
                raise _Unparseable("index mode disagrees")
        elif (old is not None and index_mode != old) or (new is not None and index_mode != new):
            raise _Unparseable("index mode disagrees")
        old = old or (None if "new file mode" in h else index_mode)
    if new is None and "deleted file mode" not in h:
        new = old  # git apply keeps the old mode when the diff names no new one
    return old, new


def _symlink_target(sec: _Section) -> bytes | None:
    """The full new content of a symlink when the section determines it, else None."""
    if sec.binary:
        return sec.binary_literal if not sec.binary_delta else None
    if len(sec.hunks) != 1:
        return None
    hunk = sec.hunks[0]
    # With no trailing context git apply anchors the hunk at the end of the file, and with
    # old_start <= 1 at its start, so the ' '/'+' lines are then the whole new content.
    body = [ln for ln in hunk.lines if ln[:1] != b"\\"]
    if hunk.old_start > 1 or hunk.new_start > 1 or not body or body[-1][:1] in (b" ", b"\n"):
        return None
    out = bytearray()
    last_new = False
    for line in hunk.lines:
        tag = line[:1]
        if tag == b"\\":
            if last_new and out.endswith(b"\n"):
                out.pop()
            continue
        last_new = tag in (b" ", b"+", b"\n")
        if last_new:
            out += line[1:] if tag != b"\n" else b"\n"
    return bytes(out)


def _count(sec: _Section) -> tuple[int, int]:
    plus = minus = 0
    for hunk in sec.hunks:
        for line in hunk.lines:
            plus += line[:1] == b"+"
            minus += line[:1] == b"-"
    return plus, minus


def _mentioned_names(sec: _Section) -> list[bytes]:
    """Every path the section mentions anywhere: all of them must pass, whichever git uses."""
    names = [*(sec.header_names or ()), sec.minus, sec.plus]
    for key in ("rename from", "rename to", "copy from", "copy to"):
        if key in sec.headers:
            names.append(_parse_plain_name(sec.headers[key]))
    return [n for n in names if n is not None]


def _check_section(sec: _Section) -> FileChange:
    for name in _mentioned_names(sec):
        problem = path_problem(name)
        if problem:
            raise _Refused(name, problem)
    old, new, kind = _resolve_names(sec)
    old_mode, new_mode = _modes(sec)
    has_content = bool(sec.hunks) or sec.binary
    display_path = new if new is not None else old
    assert display_path is not None
    if GITLINK_MODE in (old_mode, new_mode):
        raise _Refused(display_path, _GITLINK)
    if has_content and new_mode is None and kind != "deleted":
        raise _Unparseable("content change without a file mode")
    if kind == "deleted" and has_content and any(ln[:1] in (b"+", b" ") for h in sec.hunks for ln in h.lines):
        raise _Unparseable("deletion that adds lines")
    if kind == "modified" and old_mode == new_mode and not has_content:
        raise _Unparseable("section changes nothing")
    # A symlink's meaning depends on its content and its folder: check every symlink that gets
    # new content, a new folder, or becomes a symlink.
    moved = kind in ("renamed", "copied")
    if new_mode == SYMLINK_MODE and new is not None and (has_content or moved or old_mode != SYMLINK_MODE):
        target = _symlink_target(sec) if has_content else None
        if target is None:
            raise _Refused(new, "symlink change cannot be checked")
        problem = symlink_problem(new, target)
        if problem:
            raise _Refused(new, problem)
    if sec.binary_body and sec.binary_literal is None:
        raise _Refused(display_path, _BINARY_DELTA if sec.binary_delta else "binary literal that does not inflate to its stated size")
    if sec.binary_literal is not None and new is not None and _blob_ids(sec)[1] != _blob_id(sec.binary_literal, _blob_ids(sec)[1]):
        raise _Refused(display_path, "binary content that does not match its index line")
    if kind == "modified" and old_mode != new_mode and not has_content:
        kind = "mode-changed"
    insertions, deletions = _count(sec)
    return FileChange(
        kind=kind,
        old_path=_as_str(old),
        new_path=_as_str(new),
        old_mode=old_mode,
        new_mode=new_mode,
        binary=sec.binary,
        insertions=insertions,
        deletions=deletions,
    )


def _blob_ids(sec: _Section) -> tuple[str, str]:
    """The old and new object ids of the index line ("" without one)."""
    match = _INDEX_RE.fullmatch(sec.headers.get("index", b""))
    return (match[1].decode(), match[2].decode()) if match else ("", "")


def _blob_id(content: bytes, like: str) -> str:
    """The git object id of a blob with this content, in the hash (SHA-1 or SHA-256) `like` is written in."""
    digest = hashlib.sha256 if len(like) == 64 else hashlib.sha1
    return digest(b"blob %d\0" % len(content) + content).hexdigest()


def binary_content(section: bytes) -> tuple[bytes | None, bytes | None]:
    """(old, new) content of a binary file section that check_patch accepted: the new from its forward
    literal (which check_patch matched to the index line), the old from its reverse literal when that
    matches too; None when the section does not carry it."""
    try:
        sec = _parse_section(section)
    except _Unparseable:
        return None, None
    old_id, _ = _blob_ids(sec)
    old = sec.binary_reverse if sec.binary_reverse is not None and _blob_id(sec.binary_reverse, old_id) == old_id else None
    return old, sec.binary_literal


def split_sections(raw: bytes) -> tuple[bytes, list[bytes]]:
    """(preamble, sections): each section starts at a line beginning with 'diff --git '."""
    starts = [m.start() for m in re.finditer(rb"(?:^|(?<=\n))diff --git ", raw)]
    if not starts:
        return raw, []
    bounds = [*starts, len(raw)]
    return raw[: starts[0]], [raw[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def _section_label(section: bytes) -> str:
    first = section.split(b"\n", 1)[0][len(_DIFF_GIT) :]
    label = display(first)
    return label if len(label) <= 120 else label[:117] + "..."


def check_patch(raw: bytes, refuse: Callable[[FileChange], str | None] = lambda change: None) -> CheckedPatch:
    """Split `raw` into per-file sections, keep the safe ones byte-exact and refuse the rest.

    `refuse` adds the caller's own rules (a policy): it returns the reason to drop a well-formed change, or None."""
    preamble, sections = split_sections(raw)
    result = CheckedPatch(patch=b"")
    if preamble.strip():
        result.refused.append(Refusal(path="(before the first file)", reason="unexpected text before the first file"))
    kept: list[bytes] = []
    for section in sections:
        try:
            change = _check_section(_parse_section(section))
        except _Refused as refusal:
            result.refused.append(Refusal(path=refusal.path, reason=refusal.reason))
        except _Unparseable as exc:
            result.refused.append(Refusal(path=_section_label(section), reason=UNPARSEABLE, detail=str(exc)))
        else:
            if reason := refuse(change):
                result.refused.append(Refusal(path=display_str(change.path) or "", reason=reason))
                continue
            kept.append(section)
            result.changes.append(change)
    result.patch = b"".join(kept)
    return result
