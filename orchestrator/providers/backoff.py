"""Retrying a model request within the run's deadline, and a 429 backoff shared by every process of a batch.

The SDKs' own retries are turned off (max_retries=0): each of their tries would get the full request
timeout and sleep whatever retry-after says, so a call could outlast the run's remaining time several
times over. `call_within` retries instead, on the SDKs' schedule, but gives each try only the time left
before the deadline, and ends with TimeoutError rather than wait past it.

The shared backoff: a 429 to one task means the whole batch is over its rate limit, not just that task.
If every task retried on its own schedule they would keep hammering the API together. So each airlock
process of a batch hooks its HTTP client to the same file: a 429 writes "wait until T" into it (the
later deadline wins), and every request first sleeps until T has passed. The batch scheduler reads the
same file and starts no new task meanwhile. T is wall-clock time (`time.time()`), as it crosses processes.
"""

from __future__ import annotations

import contextlib
import email.utils
import fcntl
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

DEFAULT_WAIT_S = 1.0  # a 429 without retry-after still pauses the others briefly
MAX_WAIT_S = 600.0  # a bogus retry-after must not freeze the batch for hours
SLEEP_SLICE_S = 0.5  # re-read the file while waiting: another 429 may push the deadline further
# The SDKs' schedule: what retry-after asks for up to 2 minutes (longer is not retried), else 0.5 s doubling up to 8 s.
MAX_RETRY_AFTER_S = 120.0
FIRST_DELAY_S, MAX_DELAY_S = 0.5, 8.0

T = TypeVar("T")


def asked_wait(headers: Any, now: float) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `retry-after` (seconds or an HTTP date), as the SDK reads them; None if not said."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(float(value) * scale, 0.0)
        except ValueError:
            parsed = email.utils.parsedate_tz(value)
            if parsed is not None:
                return max(email.utils.mktime_tz(parsed) - now, 0.0)
    return None


def retry_after(headers: Any, now: float) -> float:
    """How long a 429 pauses the batch."""
    asked = asked_wait(headers, now)
    return DEFAULT_WAIT_S if asked is None or math.isnan(asked) else min(asked, MAX_WAIT_S)


def retry_delay(status: int | None, headers: Any, retries_done: int) -> float | None:
    """Seconds before the next try of a request that failed with `status` (None: the connection failed), or None
    when it is not to be retried. Retried as the SDKs do: 408, 409, 429 and 5xx, unless `x-should-retry` says otherwise."""
    asked = asked_wait(headers, time.time())
    if asked is not None and not asked <= MAX_RETRY_AFTER_S:
        return None
    should = headers.get("x-should-retry")
    if should == "false" or (should != "true" and status is not None and status not in (408, 409, 429) and status < 500):
        return None
    if asked:
        return asked
    return min(FIRST_DELAY_S * 2.0**retries_done, MAX_DELAY_S) * (1 - 0.25 * random.random())  # noqa: S311 - jitter, not a secret


def call_within(
    send: Callable[[float], T], deadline: float, *, max_retries: int, delay: Callable[[Exception, int], float | None],
    shared: SharedBackoff | None = None, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
) -> T:  # fmt: skip
    """`send(timeout)`, retried up to `max_retries` times while `delay(error, retries_done)` gives a wait, all before
    `deadline` (a `clock()` value): each try's timeout is the time left, and TimeoutError is raised once it is up,
    whether in a wait of the batch's shared backoff, between tries, or before one."""
    retries_done = 0
    while True:
        if shared is not None:
            shared.wait(limit_s=deadline - clock())
        left = deadline - clock()
        if left <= 0:
            raise TimeoutError
        try:
            return send(left)
        except Exception as exc:
            wait = delay(exc, retries_done) if retries_done < max_retries else None
            if wait is None:
                raise
        sleep(max(0.0, min(wait, deadline - clock())))
        retries_done += 1


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

    def wait(self, limit_s: float = math.inf) -> float:
        """Sleep until the shared deadline has passed, or `limit_s` seconds at most; returns the seconds waited."""
        waited = 0.0
        while (left := min(self.remaining(), limit_s - waited)) > 0:
            step = min(left, SLEEP_SLICE_S)
            self._sleep(step)
            waited += step
        return waited

    def on_response(self, response: Any) -> None:
        if response.status_code == 429:
            self.push(retry_after(response.headers, self._clock()))

    def event_hooks(self) -> dict[str, list[Callable[[Any], None]]]:
        """httpx event hooks that record every 429 (`call_within` waits before each try)."""
        return {"response": [self.on_response]}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Read-compare-replace across processes: without the lock, two 429s at once could lose the later deadline.
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
