"""Sizes as people write them (512m, 2g, 1.5GiB) and as they read them (512 MiB, 1.5 GiB); counts too (1 file, 2 files)."""

from __future__ import annotations

import re

from orchestrator.errors import UsageError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str, what: str, *, minimum: int = 0) -> int:
    """'512m', '2g', '1.5GiB' or a byte count -> bytes (binary units, as Docker uses them)."""
    match = _SIZE.match(str(text))
    if not match:
        raise UsageError(f"{what} must be a size like 512m or 2g, not {text!r}")
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size < minimum:
        raise UsageError(f"{what} must be at least {minimum // 1024**2} MiB, not {text!r}")
    return size


def human_size(size: int) -> str:
    return f"{size / 1024**3:.1f} GiB" if size >= 1024**3 else f"{size / 1024**2:.0f} MiB"


def plural(count: int, noun: str) -> str:
    """'1 file', '2 files', '1,234 steps'."""
    return f"{count:,} {noun}" + ("" if count == 1 else "s")
