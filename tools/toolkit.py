"""What every tool shares: its context, its declared arguments, its result and its errors."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class ToolError(Exception):
    """A failure the model should read and act on: becomes an error result carrying this message."""


@dataclass
class Result:
    output: str
    is_error: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Context:
    """The server's settings, and the mapping between model-facing paths and real ones."""

    root: str  # absolute, symlinks resolved
    max_output_bytes: int
    command_timeout: float
    max_processes: int | None = None  # RLIMIT_NPROC of the commands, when the sandbox has a kernel of its own

    def resolve(self, path: str) -> str:
        """Relative paths start at the root; absolute ones are taken as they are (the container is the boundary)."""
        return os.path.normpath(os.path.join(self.root, path))

    def show(self, path: str) -> str:
        """How a resolved path is shown to the model: relative to the root when inside it."""
        relative = os.path.relpath(path, self.root)
        outside = relative == os.pardir or relative.startswith(os.pardir + os.sep)
        return path if outside else relative


_REQUIRED: Any = object()

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}


@dataclass(frozen=True)
class Param:
    """One model-facing argument: its JSON type, its default (or required) and its bounds."""

    name: str
    kind: type  # str, int, float (any JSON number) or bool
    default: Any = _REQUIRED
    minimum: float | None = None
    maximum: float | None = None

    def take(self, args: dict[str, Any]) -> Any:
        value = args.get(self.name)
        type_name = _TYPE_NAMES[self.kind]
        if value is None:  # models sometimes send null for "not given"
            if self.default is _REQUIRED:
                raise ToolError(f"missing required argument '{self.name}' ({type_name})")
            return self.default
        if not _is_kind(value, self.kind):
            raise ToolError(f"argument '{self.name}' must be {type_name}, not {_describe(value)}")
        if self.minimum is not None and value < self.minimum:
            raise ToolError(f"argument '{self.name}' must be >= {self.minimum:g}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise ToolError(f"argument '{self.name}' must be <= {self.maximum:g}, got {value}")
        return value


def _is_kind(value: Any, kind: type) -> bool:
    if kind is bool or isinstance(value, bool):  # bool is an int subclass in Python, never in JSON
        return kind is bool and isinstance(value, bool)
    if kind is float:  # a JSON number; Python's json also parses NaN and Infinity
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, kind)


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"  # JSON has nothing else


@dataclass(frozen=True)
class Tool:
    """A model-facing tool: `run(ctx, **args)` receives arguments already checked against `params`."""

    name: str
    run: Callable[..., Result]
    params: tuple[Param, ...] = ()

    def bind(self, args: dict[str, Any]) -> dict[str, Any]:
        expected = [p.name for p in self.params]
        unknown = sorted(set(args) - set(expected))
        if unknown:  # a misspelt optional argument would otherwise be silently ignored
            raise ToolError(f"unexpected argument(s) for {self.name}: {', '.join(unknown)} (expected: {', '.join(expected) or 'none'})")
        return {p.name: p.take(args) for p in self.params}
