"""The search tool: ripgrep, run through the same bounded runner as shell commands."""

from __future__ import annotations

import os

import shell
from runtime import program
from toolkit import Context, Param, Result, Tool, ToolError

_RG_FLAGS = [
    "--no-config",  # a RIPGREP_CONFIG_PATH in the environment cannot change the output format
    "--line-number",
    "--no-heading",
    "--color",
    "never",
    "--max-columns",
    "300",
    "--max-columns-preview",
]


def search(ctx: Context, pattern: str, path: str, glob: str | None, ignore_case: bool, max_results: int) -> Result:
    rg = program("rg")
    if not os.path.isabs(rg):
        raise ToolError("ripgrep (rg) is not installed in this image; use run_bash with `grep -rn` instead")
    target = ctx.resolve(path)
    shown = ctx.show(target)
    if not os.path.lexists(target):
        raise ToolError(f"path not found: {shown}")
    argv = [rg, *_RG_FLAGS]
    if ignore_case:
        argv.append("-i")
    if glob:
        argv += ["--glob", glob]
    argv += ["-e", pattern, "--", shown]  # run from the root, so a relative path gives relative output
    done = shell.run(argv, ctx.root, ctx.command_timeout, ctx.max_output_bytes, ctx.max_processes)
    if done.timed_out:
        raise ToolError(f"search timed out after {ctx.command_timeout:g} s; narrow the path or the glob")
    if done.exit_code == 1:
        return Result(f"no matches for {pattern!r} in {shown}", meta={"matches": 0, "truncated": False})
    if done.exit_code != 0:
        raise ToolError(f"rg failed (exit code {done.exit_code}):\n{done.output.text()}")

    # Past the byte cap only the head is a clean run of matches (its last line may be cut).
    capped = done.output.dropped > 0
    data = done.output.head if capped else done.output.head + done.output.tail
    lines = data.decode("utf-8", errors="replace").splitlines()
    if capped and lines:
        lines.pop()
    if shown == ".":
        lines = [line[2:] if line.startswith("./") else line for line in lines]
    shown_lines = lines[:max_results]
    output = "\n".join(shown_lines)
    if capped:
        output += f"\n[... more matches not shown: the output passed {ctx.max_output_bytes} bytes; narrow the pattern, path or glob]"
    elif len(lines) > max_results:
        output += f"\n[... {len(lines) - max_results} more matching lines not shown (max_results={max_results}); narrow the pattern, path or glob]"
    truncated = capped or len(lines) > max_results
    return Result(output, meta={"matches": len(shown_lines), "truncated": truncated})


TOOLS = (
    Tool(
        "search",
        search,
        (
            Param("pattern", str),
            Param("path", str, "."),
            Param("glob", str, None),
            Param("ignore_case", bool, False),
            Param("max_results", int, 200, minimum=1, maximum=2000),
        ),
    ),
)
