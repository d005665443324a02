"""`airlock doctor` checks, against the real Docker daemon and the image the suite's setup built."""

from __future__ import annotations

import pytest
from rich.console import Console

from orchestrator.doctor import Check, render, run_checks
from orchestrator.sandbox.image import DEFAULT_IMAGE


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def test_daemon_and_image_ok_and_missing_key_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    checks = by_name(run_checks(DEFAULT_IMAGE))

    assert checks["Docker daemon"].ok, checks["Docker daemon"].detail
    assert "API" in checks["Docker daemon"].detail and "cgroup" in checks["Docker daemon"].detail
    assert checks["sandbox image"].ok, checks["sandbox image"].detail
    gvisor = checks["gVisor (runsc)"]
    assert not gvisor.required
    assert gvisor.ok and "a sandbox starts under it with gVisor's kernel 4.4.0" in gvisor.detail, gvisor.detail  # `make test` registers it
    key = checks["ANTHROPIC_API_KEY"]
    assert not key.ok and key.required
    assert "export ANTHROPIC_API_KEY" in key.fix and "airlock demo" in key.fix


def test_openai_provider_is_reported_and_makes_the_anthropic_key_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert not by_name(run_checks(DEFAULT_IMAGE))["openai provider"].ok
    monkeypatch.setenv("OPENAI_API_KEY", "none")
    checks = by_name(run_checks(DEFAULT_IMAGE))
    assert checks["openai provider"].ok and checks["openai provider"].detail == "installed, OPENAI_API_KEY set"
    assert not checks["ANTHROPIC_API_KEY"].ok and not checks["ANTHROPIC_API_KEY"].required


def test_api_key_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-ant-test-do-not-print-0123456789"
    monkeypatch.setenv("ANTHROPIC_API_KEY", secret)
    checks = run_checks(DEFAULT_IMAGE)
    console = Console(record=True, width=200)
    render(checks, console)

    assert by_name(checks)["ANTHROPIC_API_KEY"].ok
    assert secret not in console.export_text()
    assert all(secret not in f"{c.detail} {c.fix}" for c in checks)


def test_missing_image_says_how_to_build_it() -> None:
    check = by_name(run_checks("airlock-sandbox:does-not-exist"))["sandbox image"]

    assert not check.ok
    assert "airlock image build" in check.fix
