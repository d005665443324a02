"""A model call never outlasts the run's remaining time: the real SDKs over HTTP against the scripted server
made to stall or to ask for long waits, with airlock doing every retry within the deadline."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_run_local import FIX, events, run_locally

from orchestrator.conversation import Message, Text
from orchestrator.providers import make_provider
from orchestrator.providers.backoff import SharedBackoff, call_within
from orchestrator.providers.scripted import ApiError, ScriptedModelServer, Stall, Turn, reply, text

PROVIDERS = ["anthropic", "openai"]
BUDGET_S = 2.0
# A generous bound for a loaded machine; before, the SDKs' four retries of a timed-out request took five budgets.
SLACK_S = 3.0
TASK = [Message(role="user", content=[Text(text="Fix it.")])]


def complete(provider: str, turns: list[Turn], timeout: float, rate_limit_file: Path | None = None) -> tuple[BaseException | str, float, int]:
    """One `complete` call against the scripted server: (its error or reply text, seconds taken, requests received)."""
    with ScriptedModelServer(turns) as api:
        base_url = api.base_url if provider == "anthropic" else api.openai_base_url
        model = make_provider(provider, "scripted", api_key="test", base_url=base_url, rate_limit_file=rate_limit_file)
        model.client  # noqa: B018 - the SDK's import is not part of the call's time
        started = time.monotonic()
        try:
            outcome: BaseException | str = model.complete("system", TASK, timeout=timeout, max_tokens=100).message.text
        except Exception as exc:
            outcome = exc
        return outcome, time.monotonic() - started, len(api.requests)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_stalled_request_ends_at_the_deadline_and_is_not_sent_again(provider: str) -> None:
    outcome, took, requests = complete(provider, [Stall(60), reply(text("never"))], BUDGET_S)
    assert isinstance(outcome, TimeoutError)
    assert BUDGET_S - 0.1 <= took < BUDGET_S + SLACK_S
    assert requests == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_retry_after_longer_than_the_time_left_ends_at_the_deadline(provider: str) -> None:
    # The SDK would have slept the 30 s the server asked for, then sent it again.
    busy = ApiError(503, "busy", "overloaded_error", {"retry-after": "30"})
    outcome, took, requests = complete(provider, [busy, reply(text("never"))], BUDGET_S)
    assert isinstance(outcome, TimeoutError)
    assert BUDGET_S - 0.1 <= took < BUDGET_S + SLACK_S
    assert requests == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_errors_the_api_allows_are_retried_within_the_budget(provider: str) -> None:
    quick = {"retry-after-ms": "50"}
    turns: list[Turn] = [ApiError(429, "slow down", "rate_limit_error", quick), ApiError(500, "oops", "api_error", quick), reply(text("done"))]
    outcome, _, requests = complete(provider, turns, 30)
    assert (outcome, requests) == ("done", 3)


def test_a_retry_after_beyond_two_minutes_is_not_retried() -> None:
    outcome, took, requests = complete("openai", [ApiError(429, "come back tomorrow", "rate_limit_error", {"retry-after": "86400"})], 30)
    assert "come back tomorrow" in str(outcome) and not isinstance(outcome, TimeoutError)
    assert requests == 1 and took < 30


def test_the_batchs_shared_backoff_is_waited_for_only_until_the_deadline(tmp_path: Path) -> None:
    SharedBackoff(tmp_path / "rate-limit").push(300)  # another task of the batch got a 429 asking for 5 minutes
    outcome, took, requests = complete("anthropic", [reply(text("never"))], BUDGET_S, rate_limit_file=tmp_path / "rate-limit")
    assert isinstance(outcome, TimeoutError)
    assert BUDGET_S - 0.1 <= took < BUDGET_S + SLACK_S
    assert requests == 0


def test_retries_stop_at_max_retries_and_the_last_error_is_raised() -> None:
    now = [0.0]
    tries: list[float] = []

    def send(timeout: float) -> str:
        tries.append(timeout)
        raise ValueError(f"try {len(tries)}")

    with pytest.raises(ValueError, match="try 3"):
        call_within(send, 10.0, max_retries=2, delay=lambda error, done: 1.0, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert tries == [10.0, 9.0, 8.0]  # each try gets what is left of the deadline


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_run_whose_model_stalls_ends_as_timeout_within_its_budget_with_its_patch(calculator_repo: Path, tmp_path: Path, provider: str) -> None:
    started = time.monotonic()
    record, api, shown = run_locally(calculator_repo, tmp_path / "out", [reply(FIX), Stall(120)], provider, timeout=6)
    assert (record.status, record.exit_code, record.steps) == ("timeout", 1, 2)
    assert time.monotonic() - started < 6 + 20  # the model call ended at the deadline; not the 120 s stall
    assert len(api.requests) == 2
    assert "+    return a * b" in (tmp_path / "out" / "patch.diff").read_text()
    assert events(tmp_path / "out")[-1]["type"] == "run_end"
    assert "timeout" in shown
