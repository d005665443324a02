"""`airlock doctor` where no Docker engine answers, and its reading of runc versions."""

from __future__ import annotations

import pytest

from orchestrator.doctor import Check, run_checks, runc_is_fixed
from orchestrator.sandbox.spec import DEFAULT_IMAGE


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def test_unreachable_daemon_is_one_clear_failure(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such-docker.sock")
    checks = by_name(run_checks(DEFAULT_IMAGE))

    daemon = checks["Docker daemon"]
    assert not daemon.ok
    assert "not reachable" in daemon.detail and "no-such-docker.sock" in daemon.detail
    assert "make setup" in daemon.fix
    assert not checks["sandbox image"].ok


@pytest.mark.parametrize(
    ("versions", "fixed"),
    [
        (["1.1.12"], True),
        (["v1.1.12-0-g51d5e94", "1.1.12"], True),
        (["1.2.0"], True),
        (["1.1.11"], False),
        (["1.0.0-rc93"], False),
        (["1.1.5+ds1-1+deb12u1", "1.1.5+ds1"], True),  # Debian's backport of the fix
        (["51d5e94601ceffbbd85688df1c928ecccbfa4685"], None),
        ([], None),
    ],
)
def test_runc_leaky_vessels_versions(versions: list[str], fixed: bool | None) -> None:
    assert runc_is_fixed(versions) is fixed
