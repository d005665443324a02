"""How long a text is in tokens, estimated without the model's tokenizer and erring high; and cutting it.

A fixed characters-per-token ratio is wrong by a factor of two either way: English prose runs about 4
characters a token and code about 3, while logs full of numbers, hashes and punctuation run under 2
(tokenizers such as Qwen's split digits one by one). So a text is counted by what it is made of: each
word is a token (a long one more), each digit, punctuation mark and character beyond ASCII one, each run
of white space one. Against a real tokenizer (`make test-local-model` checks it) this is at or above the
true count for prose, code and logs alike, so a result cut to fit does fit.
"""

from __future__ import annotations

import re

# A word with its leading space, a digit, a run of white space, or any other single character.
_PIECES = re.compile(r" ?[A-Za-z]+|\d|\s+|.", re.DOTALL)
LONG_WORD = 8  # a word counts one more token for every this many letters beyond its first
MIN_CUT_CHARS = 200


def estimate_tokens(text: str) -> int:
    return sum(1 + (len(piece) - 1) // LONG_WORD if piece[-1].isalpha() else 1 for piece in _PIECES.findall(text))


def cap_text(text: str, limit: int) -> str:
    """Keep the head and tail of an over-long text (at most `limit` characters), saying what was dropped and how to see it."""
    if len(text) <= limit:
        return text
    half = limit // 2
    dropped = len(text) - 2 * half
    marker = f"\n[... {dropped} characters dropped; use line ranges, grep, head or tail to see them ...]\n"
    return text[:half] + marker + text[-half:]


def cap_tokens(text: str, tokens: int) -> str:
    """`text` cut like cap_text until its estimate is at most `tokens` (head and tail kept, the marker said)."""
    total = estimate_tokens(text)
    if total <= tokens:
        return text
    chars = int(len(text) * tokens / total)
    while True:
        shortened = cap_text(text, chars)
        if estimate_tokens(shortened) <= tokens or chars <= MIN_CUT_CHARS:
            return shortened
        chars = int(chars * 0.85)
