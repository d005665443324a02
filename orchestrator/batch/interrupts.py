"""Ctrl-C for a loop that drives runs: counted, not raised mid-way, so the loop can stop its runs cleanly."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def counted_interrupts(note: Callable[[], None]) -> Iterator[None]:
    """While inside, each Ctrl-C (or SIGTERM) calls `note` instead of raising KeyboardInterrupt."""

    def handler(*_: Any) -> None:
        note()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
