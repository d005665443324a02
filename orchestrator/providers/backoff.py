"""A 429 backoff shared by every process of a batch, through one small file.

When the API answers 429 to one task, the whole batch is over its rate limit, not just that task: if
every task retried on its own schedule they would keep hammering the API together. So each airlock
process of a batch hooks its HTTP client to the same file: a 429 writes "wait until T" into it (the
later deadline wins), and every request first sleeps until T has passed. The batch scheduler reads the
same file and starts no new task meanwhile. T is wall-clock time (`time.time()`), as it crosses processes.
"""

from __future__ import annotations

import contextlib
import email.utils
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

DEFAULT_WAIT_S = 1.0  # a 429 without retry-after still pauses the others briefly
MAX_WAIT_S = 600.0  # a bogus retry-after must not freeze the batch for hours
SLEEP_SLICE_S = 0.5  # re-read the file while waiting: another 429 may push the deadline further


def retry_after(headers: Any, now: float) -> float:
    """Seconds to wait from `retry-after-ms`, or `retry-after` (seconds or an HTTP date), as the SDK reads them."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return min(max(float(value) * scale, 0.0), MAX_WAIT_S)
        except ValueError:
            parsed = email.utils.parsedate_tz(value)
            if parsed is not None:
                return min(max(email.utils.mktime_tz(parsed) - now, 0.0), MAX_WAIT_S)
    return DEFAULT_WAIT_S


class SharedBackoff:
    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
        self.path = path
        self._clock, self._sleep = clock, sleep

    def deadline(self) -> float | None:
        try:
            return float(self.path.read_text(encoding="ascii"))
        except (OSError, ValueError):
            return None

    def remaining(self) -> float:
        """Seconds until requests may go out again (0 when there is no backoff)."""
        deadline = self.deadline()
        return max(0.0, deadline - self._clock()) if deadline is not None else 0.0

    def push(self, seconds: float) -> None:
        """Nobody sends before now + seconds; a later deadline already in the file is kept."""
        with self._locked():
            deadline = self._clock() + seconds
            current = self.deadline()
            if current is not None and current >= deadline:
                return
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(f"{deadline:.3f}", encoding="ascii")
            os.replace(tmp, self.path)  # readers see the old deadline or the new one, never half a number

    def wait(self) -> float:
        """Sleep until the shared deadline has passed; returns the seconds waited."""
        waited = 0.0
        while (left := self.remaining()) > 0:
            step = min(left, SLEEP_SLICE_S)
            self._sleep(step)
            waited += step
        return waited

    def on_response(self, response: Any) -> None:
        if response.status_code == 429:
            self.push(retry_after(response.headers, self._clock()))

    def before_request(self, request: Any) -> None:
        self.wait()

    def event_hooks(self) -> dict[str, list[Callable[[Any], None]]]:
        """httpx event hooks: wait before every request (the SDK's retries too), record every 429."""
        return {"request": [self.before_request], "response": [self.on_response]}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Read-compare-replace across processes: without the lock, two 429s at once could lose the later deadline.
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
