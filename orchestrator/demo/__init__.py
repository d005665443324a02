"""The calculator exercise: a bundled repo whose `multiply` adds, and a scripted model that fixes it."""

from __future__ import annotations

from pathlib import Path

from orchestrator.scripted_model import Turn, reply, text, tool_use

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
