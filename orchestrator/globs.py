"""Path globs as policies write them (`*.pem`, `.ssh/`, `tests/**`), matched against repo-relative paths.

Shared by the policy (protected and hidden paths) and the copy-in (hidden paths never enter the sandbox).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence


def _glob_regex(pattern: str) -> str:
    """Glob to regex: '*' and '?' stay within a folder, '**' as a whole segment spans folders."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i) and (i == 0 or pattern[i - 1] == "/"):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i) and i + 2 == len(pattern) and (i == 0 or pattern[i - 1] == "/"):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1 + (pattern.startswith("**", i))  # '**' inside a name is just '*'
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end]
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            out.append("[" + ("^/" if negate else "") + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


@functools.lru_cache(maxsize=1024)  # path_matches runs for every file of a repo
def _compile(pattern: str) -> tuple[re.Pattern[str], bool]:
    """(regex, anchored) for one pattern; a trailing '/' adds nothing once parent folders are matched."""
    body = pattern.rstrip("/")
    return re.compile(_glob_regex(body.lstrip("/"))), "/" in body


def path_matches(path: str, patterns: Sequence[str]) -> str | None:
    """The first pattern that matches `path` (a POSIX path relative to the repo root), or None.

    gitignore-like: a pattern without '/' (but for a trailing one) matches the name of the file or of any
    folder it is in (`*.pem`, `.ssh/`); a trailing '/' means that folder and everything in it; a pattern
    with a '/' is anchored at the repo root, where '**' spans folders (`tests/**`, `src/**/test_*.py`) and
    a leading '/' only anchors (`/Makefile`). A folder pattern also matches the bare folder path itself,
    since a path alone does not say whether it is a folder. Case-sensitive.
    """
    path = path.strip("/")
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]  # 'a', 'a/b', 'a/b/c'
    for pattern in patterns:
        regex, anchored = _compile(pattern)
        # Matching a folder above the path covers "that folder and everything in it".
        if any(regex.fullmatch(candidate) for candidate in (prefixes if anchored else parts)):
            return pattern
    return None


class TreeMatcher:
    """`path_matches` for a walk from the root down that never enters a folder that matched.

    Below a folder that did not match, an entry matches exactly when its own name matches an
    unanchored pattern or its own path an anchored one, so each entry costs one or two regex tests
    (names are remembered) instead of one per pattern and folder level: what a walk over every
    tree of a repository's history needs.
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        compiled = [_compile(pattern) for pattern in patterns]
        self._names = _either([regex for regex, anchored in compiled if not anchored])
        self._paths = _either([regex for regex, anchored in compiled if anchored])
        self._by_name: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return self._names is not None or self._paths is not None

    def matches(self, path: str, name: str) -> bool:
        """Whether the entry `name` at `path` (its full repo-relative path) matches; its folder did not."""
        hit = self._by_name.get(name)
        if hit is None:
            hit = self._by_name[name] = self._names is not None and self._names.fullmatch(name) is not None
        return hit or (self._paths is not None and self._paths.fullmatch(path) is not None)


def _either(regexes: list[re.Pattern[str]]) -> re.Pattern[str] | None:
    return re.compile("|".join(f"(?:{regex.pattern})" for regex in regexes)) if regexes else None
