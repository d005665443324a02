"""Untrusted text on a terminal, made safe by one function, `safe`.

Every string that comes from the model, the repo or the sandbox (plan text, commands and their output,
file names, errors that quote stderr, a batch task's error, a probe's output) may hold characters a
terminal obeys or a reader misreads: ESC sequences that set the window title (ESC]0;), write the
clipboard (ESC]52;, paste-jacking), disguise a link (ESC]8;;), erase or overwrite what was printed
(ESC[2J, ESC[1A ESC[2K, a carriage return, backspaces), C1 controls, and bidirectional or invisible
characters that reorder or hide text. `safe` turns such a string into rich Text in which each of them
is a visible escape (`\\x1b`, `\\u202e`), styled to stand out, and nothing is markup. Use `safe(text)`
where rich takes Text, `safe(text).markup` inside a markup string. The same vocabulary flags names and
lines in the review (orchestrator.review.flags).
"""

from __future__ import annotations

import re
import unicodedata

from rich.text import Text

ESCAPE_STYLE = "bold white on red"

_BIDI = frozenset([0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)])
_INVISIBLE = frozenset(
    [0x00AD, 0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180E, 0x2800, 0x3164, 0xFEFF, 0xFFA0]
    + [*range(0x180B, 0x1810), *range(0x200B, 0x200E), *range(0x2060, 0x2066), *range(0x206A, 0x2070)]
    + [*range(0xFE00, 0xFE10), *range(0xFFF9, 0xFFFC), *range(0xE0000, 0xE0080), *range(0xE0100, 0xE01F0)]
)  # fmt: skip

# Everything a renderer must show as an escape rather than as itself (tab and newline are decided per use).
HIDDEN_RE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u00a0\u00ad\u034f\u061c\u115f\u1160\u1680\u17b4\u17b5\u180b-\u180f\u2000-\u200f"
    "\u2028-\u202f\u205f-\u206f\u2800\u3000\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb"
    "\U000e0000-\U000e007f\U000e0100-\U000e01ef\udc80-\udcff]"
)


def hidden_kind(ch: str) -> str | None:
    """What kind of deceptive or invisible character `ch` is, or None for an ordinary visible one."""
    cp = ord(ch)
    if ch in "\n\r\u2028\u2029\x0b\x0c\x85":
        return "line break"
    if ch == "\t":
        return "tab"
    if cp < 0x20 or cp == 0x7F:
        return "control character"
    if 0x80 <= cp <= 0x9F:
        return "C1 control character"
    if 0xDC80 <= cp <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return "invalid UTF-8 byte"
    if cp in _BIDI:
        return "bidirectional control"
    if cp in _INVISIBLE:
        return "invisible character"
    category = unicodedata.category(ch)
    if category == "Zs" and ch != " ":
        return "unusual space"
    if category == "Cf":
        return "invisible character"
    if category in ("Co", "Cn", "Cs"):
        return "unassigned or private character"
    return None


def escape_char(ch: str) -> str:
    """The printable escape shown for a hidden character, in the form `patch.display` and run.json use."""
    cp = ord(ch)
    if 0xDC80 <= cp <= 0xDCFF:
        return f"\\x{cp - 0xDC00:02x}"
    return ch.encode("unicode_escape").decode("ascii")


def safe(text: object, style: str = "", *, keep: str = "\t\n") -> Text:
    """Untrusted text as rich Text: every hidden character (but those in `keep`, and ordinary-looking
    spaces) becomes a visible escape, and nothing is parsed as markup."""
    out = Text(style=style)
    text = "" if text is None else str(text)
    pos = 0
    for match in HIDDEN_RE.finditer(text):
        ch = match.group()
        if ch in keep or hidden_kind(ch) == "unusual space":
            continue
        out.append(text[pos : match.start()])
        out.append(escape_char(ch), style=ESCAPE_STYLE)
        pos = match.end()
    out.append(text[pos:])
    return out
