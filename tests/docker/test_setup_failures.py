"""A failed setup says why in one line, before the log's tail: hermetic causes, against the index of conftest.py
(an untrusted certificate against the real registry is in test_setup_registries.py)."""

from __future__ import annotations

from pathlib import Path

from package_index import PackageIndex

from orchestrator.providers.scripted import reply, text

NEVER = [reply(text("never asked"))]


def failed_with(result, cause: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 1 and result.record["status"] == "setup_failed", result.stdout + result.stderr
    error = result.record["error"]
    assert error.endswith(cause) and "\n" not in error, error
    shown = result.stdout.index(f"setup failed: {error}")
    assert shown < result.stdout.index("setup log (last lines):")


def test_a_package_the_index_does_not_have_is_named(run_scripted, tmp_path: Path, index: PackageIndex, policy: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "requirements.txt").write_text(f"--index-url {index.url}\n--trusted-host {index.host}\nairlock-nothere==1.0\n")
    result, api = run_scripted(repo, NEVER, "--setup", "auto", "--policy", str(policy))
    failed_with(result, ": the registry has no package 'airlock-nothere==1.0' (or no version that fits)")
    assert api.requests == []


def test_a_full_disk_and_a_full_memory_are_named_with_the_limit_to_raise(run_scripted, tmp_path: Path, policy: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    small = tmp_path / "small.toml"
    small.write_text(policy.read_text() + 'disk = "48m"\nmemory = "256m"\n')
    full, _ = run_scripted(repo, NEVER, "--setup", "dd if=/dev/zero of=/opt/airlock-env/big bs=1M count=96", "--policy", str(small))
    failed_with(full, ": the setup ran out of disk: raise [setup] disk (48 MiB)")

    hungry, _ = run_scripted(repo, NEVER, "--setup", "python3 -c 'x = bytearray(1024 ** 3)'", "--policy", str(small))
    failed_with(hungry, ": the sandbox ran out of memory (limit 256 MiB): raise [setup] memory (256 MiB)")
