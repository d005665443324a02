"""Language highlighting for diff lines: Pygments splits the text into tokens, the renderer colours them.

Each hunk's old side (context and removed lines) and new side (context and added lines) are lexed as
one text each, so strings and comments spanning lines colour right. Only a few token classes are
used, mapped to a calm palette in the report's stylesheet. When anything could misalign lines (a
lone carriage return, a lexer that changes the text) the hunk stays plain: correct beats colourful.
"""

from __future__ import annotations

from pygments.lexer import Lexer
from pygments.lexers import get_lexer_for_filename
from pygments.token import Comment, Keyword, Literal, Name, Operator, String, Token, _TokenType
from pygments.util import ClassNotFound

from orchestrator.review.diff import DiffLine

MAX_HIGHLIGHT_CHARS = 200_000  # per file; bigger files stay plain rather than slow the report down

# Token type -> short CSS class (the report's stylesheet colours `.tk-<class>`); most specific first.
_CLASSES: list[tuple[_TokenType, str]] = [
    (Comment, "c"),
    (String.Doc, "c"),
    (Literal.String, "s"),
    (Literal.Number, "n"),
    (Keyword.Constant, "n"),
    (Keyword.Type, "t"),
    (Keyword, "k"),
    (Operator.Word, "k"),
    (Name.Builtin, "b"),
    (Name.Function, "f"),
    (Name.Class, "t"),
    (Name.Exception, "t"),
    (Name.Decorator, "d"),
    (Name.Tag, "k"),
    (Name.Attribute, "a"),
    (Name.Variable, "v"),
    (Name.Label, "d"),
]

Tokens = list[tuple[str | None, str]]  # (css class or None, text) for one line


def token_class(ttype: _TokenType) -> str | None:
    for parent, css in _CLASSES:
        if ttype in parent:
            return css
    return None


def lexer_for(path: str) -> Lexer | None:
    try:
        return get_lexer_for_filename(path.rsplit("/", 1)[-1], stripnl=False, stripall=False, ensurenl=False, tabsize=0)
    except (ClassNotFound, ValueError):
        return None


def _lex(lexer: Lexer, lines: list[str]) -> list[Tokens] | None:
    text = "\n".join(lines)
    pieces: list[list[tuple[str | None, str]]] = [[]]
    seen = []
    for ttype, value in lexer.get_tokens(text):
        seen.append(value)
        css = token_class(ttype) if ttype is not Token.Text else None
        for i, part in enumerate(value.split("\n")):
            if i:
                pieces.append([])
            if part:
                pieces[-1].append((css, part))
    if "".join(seen) != text or len(pieces) != len(lines):
        return None
    return pieces


def highlight(path: str, lines: list[DiffLine]) -> list[Tokens | None]:
    """Tokens for each diff line (None: show it plain), aligned with `lines`."""
    result: list[Tokens | None] = [None] * len(lines)
    lexer = lexer_for(path)
    if lexer is None or sum(len(line.text) for line in lines) > MAX_HIGHLIGHT_CHARS:
        return result
    hunks: list[list[int]] = []
    for i, line in enumerate(lines):
        if line.kind == "hunk" or not hunks:
            hunks.append([])
        if line.kind in ("context", "add", "del"):
            hunks[-1].append(i)
    for hunk in hunks:
        for side, kinds in (("old", ("context", "del")), ("new", ("context", "add"))):
            indexes = [i for i in hunk if lines[i].kind in kinds]
            texts = [lines[i].text.removesuffix("\r") for i in indexes]
            if not texts or any("\r" in text or lines[i].cut for text, i in zip(texts, indexes, strict=True)):
                continue
            lexed = _lex(lexer, texts)
            if lexed is None:
                continue
            for i, tokens in zip(indexes, lexed, strict=True):
                if lines[i].kind != "context" or side == "new":  # context lines take the new side's colours
                    result[i] = tokens
    return result
