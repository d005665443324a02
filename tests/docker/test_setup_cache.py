"""The environment cache is keyed by everything a setup could read: a neighbour's repo cannot poison it, and
an edit to a nested requirements file is a new environment. Against the hermetic index of conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from package_index import PackageIndex, build_wheel

from orchestrator.providers.scripted import reply, text

TEST = "python3 -m pytest -q"
# A pytest plugin that turns every session's exit status into 0: what the attacker's repo installs.
ALWAYS_PASS = "import pytest\n\n\n@pytest.hookimpl(trylast=True)\ndef pytest_sessionfinish(session, exitstatus):\n    session.exitstatus = 0\n"
A_REAL_BUG = "def test_the_bug():\n    assert 1 + 1 == 3\n"


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def test_a_neighbours_repo_with_the_same_root_files_cannot_poison_the_victims_verify(
    run_scripted, tmp_path: Path, index: PackageIndex, policy: Path
) -> None:  # fmt: skip
    """The attack from issue 18: byte-identical root files, a nested requirements file that installs a local
    package registering a pytest plugin that makes every session pass."""
    plugin = build_wheel(tmp_path, "always-pass", "1.0", ALWAYS_PASS, entry_points="[pytest11]\nalways_pass = always_pass\n")
    root = {"requirements.txt": "-r requirements/test.txt\n", "test_bug.py": A_REAL_BUG}
    attacker = write(tmp_path / "attacker", {**root, "requirements/test.txt": f"./wheels/{plugin.name}\n", f"wheels/{plugin.name}": plugin.read_bytes()})
    victim = write(tmp_path / "victim", {**root, "requirements/test.txt": "# nothing more\n"})
    never = [reply(text("I looked; nothing to change."))]

    poisoned, _ = run_scripted(attacker, never, "--setup", "auto", "--policy", str(policy), "--verify", TEST)
    assert poisoned.exit_code == 0 and poisoned.record["verify"]["passed"], poisoned.stdout + poisoned.stderr  # the plugin works...
    assert poisoned.record["setup"]["inputs"]["mode"] == "repo" and "./wheels/always_pass-1.0" in poisoned.record["setup"]["inputs"]["why"]

    honest, _ = run_scripted(victim, never, "--setup", "auto", "--policy", str(policy), "--verify", TEST)
    setup = honest.record["setup"]
    assert setup["key"] != poisoned.record["setup"]["key"] and setup["cache"] == "build"
    assert setup["inputs"] == {"mode": "manifests", "files": 2, "why": None, "repo_code": None}
    assert setup["key_files"] == ["requirements.txt", "requirements/test.txt"]
    assert honest.exit_code == 1 and honest.record["status"] == "verify_failed"  # ...but only in its own environment
    assert "1 failed" in honest.record["verify"]["output_tail"]


def test_editing_a_nested_requirements_file_is_a_new_environment_with_the_new_dependency(
    run_scripted, tmp_path: Path, index: PackageIndex, policy: Path
) -> None:  # fmt: skip
    source = f"--index-url {index.url}\n--trusted-host {index.host}\n"
    repo = write(tmp_path / "repo", {"requirements.txt": "-r requirements/base.txt\n", "requirements/base.txt": source, "src/app.py": "X = 1\n"})
    probe = "python3 -c 'import airlock_testdep; print(\"answer\", airlock_testdep.answer())'"
    first, _ = run_scripted(repo, [reply(text("done"))], "--setup", "auto", "--policy", str(policy), "--verify", probe)
    assert first.record["setup"]["cache"] == "build" and first.record["status"] == "verify_failed"  # not installed yet
    assert "setup: the setup sandbox holds only the files of the key: requirements.txt, requirements/base.txt" in first.stdout

    (repo / "src" / "app.py").write_text("X = 2\n")  # the project's code is not part of the key...
    again, _ = run_scripted(repo, [reply(text("done"))], "--setup", "auto", "--policy", str(policy))
    assert again.record["setup"]["cache"] == "hit" and again.record["setup"]["key"] == first.record["setup"]["key"]

    (repo / "requirements" / "base.txt").write_text(source + "airlock-testdep==1.0\n")  # ...but a nested requirements file is
    second, _ = run_scripted(repo, [reply(text("done"))], "--setup", "auto", "--policy", str(policy), "--verify", probe)
    assert second.exit_code == 0, second.stdout + second.stderr
    assert second.record["setup"]["cache"] == "build" and second.record["setup"]["key"] != first.record["setup"]["key"]
    assert "answer 42" in second.record["verify"]["output_tail"]


@pytest.mark.parametrize("reference", ["-r ../../shared/requirements.txt", "/etc/airlock-elsewhere"])
def test_a_requirements_file_that_reaches_outside_the_repo_is_refused_in_one_line(run_scripted, tmp_path: Path, policy: Path, reference: str) -> None:
    write(tmp_path / "shared", {"requirements.txt": "requests\n"})
    repo = write(tmp_path / "repo", {"requirements.txt": "-r requirements/dev.txt\n", "requirements/dev.txt": f"{reference}\n"})
    result, api = run_scripted(repo, [reply(text("never asked"))], "--setup", "auto", "--policy", str(policy))
    assert result.exit_code == 1 and result.record["status"] == "setup_failed" and api.requests == []
    error = result.record["error"]
    assert error.startswith(f"requirements/dev.txt refers to '{reference.removeprefix('-r ')}', outside the repo") and "\n" not in error
    assert "Traceback" not in result.stdout + result.stderr
