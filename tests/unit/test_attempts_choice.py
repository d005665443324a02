"""How `--attempts` chooses among its attempts, and how they differ."""

from __future__ import annotations

from orchestrator.batch.attempts import choose, temperatures
from orchestrator.run.record import AttemptSummary


def attempt(number: int, status: str = "completed", verify: bool | None = None, lines: int = 4, steps: int = 3) -> AttemptSummary:
    return AttemptSummary(number=number, folder=f"attempts/{number}", status=status, verify=verify, changed_lines=lines, steps=steps)


def test_verify_decides_then_the_smallest_patch_then_the_fewest_steps() -> None:
    assert choose([attempt(1, verify=False, lines=1), attempt(2, verify=True, lines=9), attempt(3, verify=False)], "verify") == (
        2, "the only attempt whose verify passed",
    )  # fmt: skip
    chosen, why = choose([attempt(1, verify=True, lines=9), attempt(2, verify=True, lines=2), attempt(3, verify=True, lines=5)], "verify")
    assert chosen == 2 and why == "verify passed for 3 attempts; the smallest patch (2 changed lines)"
    chosen, why = choose([attempt(1, verify=True, lines=2, steps=5), attempt(2, verify=True, lines=2, steps=3)], "verify")
    assert chosen == 2 and why.endswith("then the fewest steps (3)")
    chosen, why = choose([attempt(1, verify=True, lines=2), attempt(2, verify=True, lines=2)], "verify")
    assert chosen == 1 and why.endswith("then the fewest steps (3), then the lowest number")


def test_a_verify_that_passed_after_an_error_or_none_at_all_chooses_nothing() -> None:
    assert choose([attempt(1, status="sandbox_error", verify=True), attempt(2, verify=False)], "verify") == (None, "no attempt's verify passed")
    assert choose([attempt(1, status="not_started")], "verify") == (None, "no attempt's verify passed")


def test_without_verify_the_pick_decides() -> None:
    summaries = [attempt(1, status="max_steps", lines=1), attempt(2, lines=7), attempt(3, lines=0), attempt(4, lines=3)]
    assert choose(summaries, "first") == (2, "--pick first: the first attempt (by number) that completed")
    assert choose(summaries, "smallest") == (4, "--pick smallest: the smallest patch (3 changed lines)")  # an empty patch is no candidate
    assert choose(summaries, "none") == (None, "--pick none: every attempt is kept and none is chosen")
    assert choose([attempt(1, status="timeout")], "first") == (None, "no attempt completed")
    assert choose([attempt(1, lines=0)], "smallest") == (None, "no attempt completed with a patch")


def test_attempts_differ_in_temperature_and_one_alone_keeps_the_default() -> None:
    assert temperatures(1) == [None]
    assert temperatures(2) == [1.0, 0.5]
    assert temperatures(3) == [1.0, 0.75, 0.5]
    assert len(set(temperatures(8))) == 8
    assert temperatures(3, sampled=False) == [None, None, None]  # an API without a temperature
