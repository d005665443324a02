"""The tools offered to the model: one typed model per tool, from which the JSON Schema is generated.

Arguments are validated on the host before anything reaches the sandbox, so a missing argument or a
wrong type comes back to the model as an `is_error` tool result it can correct.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ToolArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReadFile(ToolArgs):
    """Read a text file from the repository, with line numbers (like `cat -n`).

    Paths are relative to the repository root. Without a range, returns up to 2000 lines and says
    how long the file is; pass start_line/end_line to read a specific part of a long file."""

    path: str = Field(description="File path, relative to the repository root.")
    start_line: int | None = Field(None, ge=1, description="First line to return (1-based, inclusive).")
    end_line: int | None = Field(None, ge=1, description="Last line to return (inclusive).")


class WriteFile(ToolArgs):
    """Create a file, or replace a file's entire content. Parent folders are created.

    To change part of an existing file, use edit_file: it is cheaper and safer than rewriting the file."""

    path: str = Field(description="File path, relative to the repository root.")
    content: str = Field(description="The complete new content of the file, written exactly as given.")


class EditFile(ToolArgs):
    """Replace one exact occurrence of old_str with new_str in a file.

    old_str must match the file's text exactly, whitespace and indentation included, and must occur
    exactly once: include enough surrounding lines to make it unique. Read the file first."""

    path: str = Field(description="File path, relative to the repository root.")
    old_str: str = Field(description="The exact text to replace; must occur exactly once in the file.")
    new_str: str = Field(description="The text to put in its place (may be empty to delete).")


class ListDir(ToolArgs):
    """List a folder of the repository as a tree (folders end with '/', symlinks show their target)."""

    path: str = Field(".", description="Folder path, relative to the repository root.")
    depth: int = Field(2, ge=1, le=5, description="How many levels deep to list.")


class Search(ToolArgs):
    """Search file contents with ripgrep (regular expressions); returns matching lines as path:line:text.

    Respects .gitignore. Use `glob` to restrict to some files, for example '*.py'."""

    pattern: str = Field(description="Regular expression (Rust regex syntax) to search for.")
    path: str = Field(".", description="File or folder to search in, relative to the repository root.")
    glob: str | None = Field(None, description="Only search files matching this glob, e.g. '*.py'.")
    ignore_case: bool = Field(False, description="Match case-insensitively.")
    max_results: int = Field(200, ge=1, le=2000, description="Maximum number of matching lines to return.")


class RunBash(ToolArgs):
    """Run a shell command with bash in the sandbox and return its combined stdout and stderr and exit code.

    Each call starts in the repository root in a fresh shell: `cd`, exported variables and background
    jobs do not persist between calls (chain commands with && instead). There is no network and no
    input: commands that prompt fail instead of waiting. Long output is cut in the middle (its start
    and end are kept); narrow it with grep, head or tail. A command is killed at its time limit."""

    command: str = Field(description="The bash command line to run.")
    timeout: float | None = Field(None, gt=0, description="Seconds before the command is killed (capped by the run's limit).")


TOOLS: dict[str, type[ToolArgs]] = {
    "read_file": ReadFile,
    "write_file": WriteFile,
    "edit_file": EditFile,
    "list_dir": ListDir,
    "search": Search,
    "run_bash": RunBash,
}


def _description(model: type[ToolArgs]) -> str:
    """The docstring's paragraphs, each unwrapped to one line."""
    paragraphs = inspect.cleandoc(model.__doc__ or "").split("\n\n")
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)


@functools.cache
def tool_schemas() -> list[dict[str, Any]]:
    """Name, description and JSON Schema of every tool, in a fixed order so a cached prompt prefix never changes.

    Each provider adapter renders these into its own API's tool format. Made once; read-only."""
    schemas = []
    for name, model in TOOLS.items():
        schema = model.model_json_schema()
        schema.pop("title", None)
        schema.pop("description", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        schemas.append({"name": name, "description": _description(model), "schema": schema})
    return schemas


class ToolInputError(ValueError):
    """The model's tool call cannot be run as given; the message goes back to it as a tool error."""


def validate_call(name: str, raw_input: object) -> dict[str, Any]:
    """Check a tool call against its schema; returns the arguments to send to the sandbox."""
    model = TOOLS.get(name)
    if model is None:
        raise ToolInputError(f"Unknown tool {name!r}. Available tools: {', '.join(TOOLS)}.")
    try:
        args = model.model_validate(raw_input)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors())
        raise ToolInputError(f"Invalid arguments for {name}: {problems}") from None
    return args.model_dump(exclude_none=True)
