"""Following a run from the outside, through the trajectory it writes anyway (append-only, one JSON a line)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class TrajectoryTail:
    """The events a run appended to its trajectory since the last read; a line still being written waits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def new_events(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as file:
                file.seek(self._offset)
                data = file.read()
        except OSError:
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        events = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events


class UsageFields:
    """Attribute access to a recorded usage dict, as Usage.add expects."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)
