"""The calculator exercise: a bundled repo whose `multiply` adds, and a scripted model that fixes it."""

from __future__ import annotations

from pathlib import Path

from orchestrator.providers.scripted import Turn, reply, text, tool_use

CALCULATOR_REPO = Path(__file__).parent / "calculator"
CALCULATOR_TASK = "Run the tests, find the bug, fix it."
TEST_COMMAND = "python3 -m pytest -q -p no:cacheprovider"


def calculator_script() -> list[Turn]:
    """What a good agent does on the exercise: test, read, edit, test again, stop."""
    return [
        reply(text("I'll start by running the test suite to see what fails."), tool_use("run_bash", command=TEST_COMMAND)),
        reply(text("The multiply tests fail. Let me read calculator.py."), tool_use("read_file", path="calculator.py")),
        reply(
            text("multiply returns a + b; it should return a * b."),
            tool_use("edit_file", path="calculator.py", old_str="def multiply(a, b):\n    return a + b", new_str="def multiply(a, b):\n    return a * b"),
        ),
        reply(text("Now I'll rerun the tests."), tool_use("run_bash", command=TEST_COMMAND)),
        reply(text("All tests pass. I fixed `multiply` in calculator.py, which added its arguments instead of multiplying them.")),
    ]


def long_run_script(steps: int = 40, *, big_step: int | None = None) -> list[Turn]:
    """A long exploration: `steps` tool calls of ~3,600 characters of output each (each a different one), then the end.

    Together they are several times a small context window (for the trimming test and `make bench`);
    `big_step`'s command prints ~590k characters instead, far over any output limit."""
    turns = [
        reply(text(f"Step {n}: looking at more output."), tool_use("run_bash", command="seq 1 100000" if n == big_step else f"seq {10000 + n} {10600 + n}"))
        for n in range(1, steps + 1)
    ]
    return [*turns, reply(text("Done: I looked at everything."))]
