"""A patch as a reviewer reads it: one `FileDiff` per file, with numbered lines and its flags.

The parsing and checking is `orchestrator.patch.check`'s strict parser, run on each file's section on
its own so every section gets its own verdict: a section it cannot parse is shown raw and flagged
instead of being dropped. What is left here is only laying out the hunks it accepted: line numbers
and kinds. Lines are capped per file and per run so a huge patch keeps the report usable; the raw
patch file lies next to the report for the rest.

A binary file is laid out too: its hunks are literals of the whole new (and old) content, so it is shown
decoded as text, as a diff against the old content when the patch carries that, with NUL and control
bytes escaped by the renderers. Whatever `git apply` would write, the reviewer sees.
"""

from __future__ import annotations

import difflib
import re
from typing import Literal

from pydantic import BaseModel, Field

from orchestrator.patch.check import SYMLINK_MODE, FileChange, binary_content, check_patch, display, split_sections
from orchestrator.review.flags import Flag, change_flags, content_flags, name_flags

MAX_LINES_PER_FILE = 600
MAX_LINES_PER_RUN = 6000
MAX_LINE_CHARS = 2000
MAX_DIFFED_LINES = 200_000  # a binary's old and new lines beyond this are not diffed: the new is shown whole
GIT_BINARY_PROBE = 8000  # git takes a file with a NUL in its first 8000 bytes for binary

_HUNK_RE = re.compile(rb"@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@ ?(.*)")

LineKind = Literal["hunk", "context", "add", "del", "nonl", "raw"]


class DiffLine(BaseModel):
    kind: LineKind
    old: int | None = None  # line number in the old file
    new: int | None = None  # line number in the new file
    text: str = ""  # without the tag and the newline; surrogateescape-decoded; a CR ending the line is kept
    cut: int = 0  # characters cut from an over-long line


class FileDiff(BaseModel):
    change: FileChange | None  # None when the parser refused the section
    label: str = ""  # the section's first line, for a section that could not be parsed
    problem: str | None = None
    lines: list[DiffLine] = Field(default_factory=list)
    hidden_lines: int = 0  # lines not kept because of the caps
    similarity: int | None = None
    symlink_target: str | None = None
    flags: list[Flag] = Field(default_factory=list)

    @property
    def path(self) -> str:
        return self.change.path if self.change else self.label

    @property
    def kind(self) -> str:
        return self.change.kind if self.change else "unparseable"

    @property
    def insertions(self) -> int:
        return self.change.insertions if self.change else 0

    @property
    def deletions(self) -> int:
        return self.change.deletions if self.change else 0


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _cap(line: DiffLine) -> DiffLine:
    if len(line.text) > MAX_LINE_CHARS:
        line.cut = len(line.text) - MAX_LINE_CHARS
        line.text = line.text[:MAX_LINE_CHARS]
    return line


def _layout(section: bytes) -> tuple[list[DiffLine], int | None]:
    """Numbered lines of an accepted section's hunks, and its rename/copy similarity."""
    lines: list[DiffLine] = []
    similarity = None
    in_hunks = False
    old = new = 0
    for raw in section.split(b"\n")[:-1]:  # a section always ends with a newline
        if not in_hunks:
            if match := re.fullmatch(rb"(?:dis)?similarity index (\d{1,3})%", raw):
                similarity = int(match[1])
            in_hunks = raw.startswith(b"+++ ")
            continue
        tag, body = raw[:1], _decode(raw[1:])
        if tag == b"@":
            match = _HUNK_RE.fullmatch(raw)
            assert match, "the patch parser accepted this section"
            old, new = int(match[1]), int(match[2])
            lines.append(DiffLine(kind="hunk", old=old, new=new, text=_decode(raw)))
        elif tag in (b" ", b""):  # git apply takes an empty line as empty context, and so does the parser
            lines.append(_cap(DiffLine(kind="context", old=old, new=new, text=body)))
            old, new = old + 1, new + 1
        elif tag == b"-":
            lines.append(_cap(DiffLine(kind="del", old=old, text=body)))
            old += 1
        elif tag == b"+":
            lines.append(_cap(DiffLine(kind="add", new=new, text=body)))
            new += 1
        else:  # "\ No newline at end of file"
            lines.append(DiffLine(kind="nonl", text=_decode(raw[2:])))
    return lines, similarity


def file_diffs(raw: bytes, run_budget: int = MAX_LINES_PER_RUN) -> list[FileDiff]:
    """Every file section of a patch, checked, laid out and flagged, in patch order."""
    preamble, sections = split_sections(raw)
    diffs: list[FileDiff] = []
    if preamble.strip():
        diffs.append(_unparseable(preamble, "(before the first file)", "text before the first file"))
    budget = run_budget
    for section in sections:
        checked = check_patch(section)
        if not checked.changes:
            refusal = checked.refused[0]
            diffs.append(_unparseable(section, refusal.path, f"{refusal.reason}{': ' + refusal.detail if refusal.detail else ''}"))
            continue
        change = checked.changes[0]
        lines, similarity = _layout(section)
        was_text = None
        if change.binary:
            old, new = binary_content(section)
            was_text = old is not None and b"\0" not in old[:GIT_BINARY_PROBE]
            lines = _decoded(old, new) if new is not None and change.kind != "deleted" else []
        added = [line.text for line in lines if line.kind == "add"]
        target = "\n".join(added) if change.new_mode == SYMLINK_MODE and added else None
        keep = max(0, min(MAX_LINES_PER_FILE, budget))
        budget -= min(len(lines), keep)
        diffs.append(
            FileDiff(
                change=change, lines=lines[:keep], hidden_lines=max(0, len(lines) - keep), similarity=similarity,
                symlink_target=target, flags=change_flags(change, added, target, binary_was_text=was_text),
            )
        )  # fmt: skip
    return diffs


def _split(data: bytes) -> list[bytes]:
    """Lines with their '\\n' (only '\\n' ends a line, as in a diff)."""
    parts = data.split(b"\n")
    return [part + b"\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _decoded(old: bytes | None, new: bytes) -> list[DiffLine]:
    """A binary file's new content as numbered lines: the changed ones against `old` when known, else all."""
    a, b = _split(old or b""), _split(new)
    if old is None or len(a) + len(b) > MAX_DIFFED_LINES:
        groups = [[("insert", 0, 0, 0, len(b))]] if b else []
    else:
        groups = list(difflib.SequenceMatcher(None, a, b, autojunk=False).get_grouped_opcodes(3))
    lines: list[DiffLine] = []
    for group in groups:
        first, last = group[0], group[-1]
        lines.append(
            DiffLine(kind="hunk", old=first[1] + 1, new=first[3] + 1, text=f"@@ -{first[1] + 1},{last[2] - first[1]} +{first[3] + 1},{last[4] - first[3]} @@")
        )
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                lines += [_line("context", a[i], old=i + 1, new=j1 + i - i1 + 1) for i in range(i1, i2)]
                continue
            lines += [_line("del", a[i], old=i + 1) for i in range(i1, i2)]
            lines += [_line("add", b[j], new=j + 1) for j in range(j1, j2)]
    return lines


def _line(kind: LineKind, raw: bytes, old: int | None = None, new: int | None = None) -> DiffLine:
    return _cap(DiffLine(kind=kind, old=old, new=new, text=_decode(raw.removesuffix(b"\n"))))


def _unparseable(section: bytes, label: str, problem: str) -> FileDiff:
    """A section the strict parser refused: shown raw (escaped by the renderers) and flagged."""
    lines = [_cap(DiffLine(kind="raw", text=_decode(line))) for line in section.split(b"\n")[:MAX_LINES_PER_FILE]]
    flag = Flag(severity="danger", code="unparseable", message=f"this part of the patch is not a change git would make as shown: {problem}", path=label)
    added = [line.text[1:] for line in lines if line.text.startswith("+")]
    return FileDiff(change=None, label=label, problem=problem, lines=lines, flags=[flag, *name_flags(label), *content_flags(label, added)])


def shown_name(path: str | None) -> str:
    """Plain printable form of a raw path (the one run.json uses)."""
    return "" if path is None else display(path.encode("utf-8", "surrogateescape"))
