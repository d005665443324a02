"""trajectory.jsonl: every model request and response and every tool call, appended as the run goes.

One JSON object per line with a `type`, the seconds since the run started (`t`) and the format
`version` on the first line. Each line is flushed and synced to disk at once, so a crash, a kill or the
host going down keeps everything up to it (a torn last line is skipped when read).
Requests are recorded as the messages added since the previous request (the rest is unchanged), so
the file grows with the conversation rather than with its square.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

FORMAT_VERSION = 2


class Trajectory:
    def __init__(self, path: Path) -> None:
        self._file = path.open("a", encoding="utf-8")
        self._start = time.monotonic()
        self._lock = threading.Lock()  # the sandbox is made ready on a thread of its own, beside the agent

    def write(self, type_: str, **fields: Any) -> None:
        line = json.dumps({"type": type_, "t": round(time.monotonic() - self._start, 3), **fields}, ensure_ascii=False, default=str) + "\n"
        with self._lock:
            if not self._file.closed:
                self._file.write(line)
                self._file.flush()
                os.fsync(self._file.fileno())  # a kill, or the host going down, keeps every step written so far

    def close(self) -> None:
        with self._lock:
            self._file.close()


def read_events(path: Path) -> list[dict[str, Any]]:
    """All events of a trajectory file (a torn last line from a crash is skipped)."""
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events
