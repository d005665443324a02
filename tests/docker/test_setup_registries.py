"""The setup phase against the real registries (these machines and CI reach PyPI and npm's registry):
a small real Python project whose tests run in the agent phase only after `--setup auto`, and `npm ci`
of a tiny real package. The CA bundle of the host is given to the setup, as on a network whose egress
inspects TLS; elsewhere it holds the usual public CAs."""

from __future__ import annotations

import shutil
from pathlib import Path

from helpers import PROJECT

from orchestrator.providers.scripted import reply, text, tool_use
from orchestrator.run.detect import EDITABLE_LATER

FIXTURES = PROJECT / "tests" / "fixtures"
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
CA = ["--setup-ca", HOST_CA] if Path(HOST_CA).exists() else []


def test_a_real_python_project_runs_its_tests_only_after_setup_auto(run_scripted, tmp_path: Path) -> None:
    repo = tmp_path / "wordcount"
    shutil.copytree(FIXTURES / "python_project", repo)
    where = "python3 -c 'import wordcount; print(wordcount.__file__)'"
    turns = [reply(tool_use("run_bash", command="python3 -m pytest -q"), tool_use("run_bash", command=where)), reply(text("done"))]

    without, _ = run_scripted(repo, turns)
    assert "ModuleNotFoundError: No module named 'wordcount'" in without.events("tool_call")[0]["output"]

    with_setup, _ = run_scripted(repo, turns, "--setup", "auto", *CA, "--verify", "python3 -m pytest -q")
    assert with_setup.exit_code == 0, with_setup.stdout + with_setup.stderr
    setup = with_setup.record["setup"]
    # Manifests first: the dependencies from pyproject.toml's static metadata, the project editable in each sandbox.
    assert setup["ecosystems"] == ["python"] and setup["commands"][1:] == [EDITABLE_LATER, "pip install 'setuptools>=64' wheel iniconfig==2.0.0 pytest"]
    assert setup["inputs"]["mode"] == "manifests" and setup["key_files"] == ["pyproject.toml"]
    assert {"pypi.org", "files.pythonhosted.org"} <= {host["host"] for host in setup["hosts"] if host["allowed"]}
    pytest_run, imported = (call["output"] for call in with_setup.events("tool_call"))
    assert "1 passed" in pytest_run and imported.startswith("/workspace/src/wordcount/__init__.py")  # the agent's edits count
    assert with_setup.record["verify"]["passed"]
    assert setup["created"] == [] and with_setup.patch == b""

    (repo / "src" / "wordcount" / "__init__.py").write_text("# an edit to the project's code\n" + (repo / "src" / "wordcount" / "__init__.py").read_text())
    edited, _ = run_scripted(repo, turns, "--setup", "auto", *CA)  # the code is not part of the key: the same environment
    assert edited.record["setup"]["cache"] == "hit" and edited.record["setup"]["key"] == setup["key"]
    assert "1 passed" in edited.events("tool_call")[0]["output"]


def test_npm_ci_installs_a_real_package_for_the_agent(run_scripted, tmp_path: Path) -> None:
    repo = tmp_path / "webapp"
    shutil.copytree(FIXTURES / "node_project", repo)
    turns = [reply(tool_use("run_bash", command="npm test")), reply(text("done"))]
    result, _ = run_scripted(repo, turns, "--setup", "npm ci", *CA, "--verify", "npm test")

    assert result.exit_code == 0, result.stdout + result.stderr
    setup = result.record["setup"]
    assert setup["created"] == ["node_modules"]
    assert any(host["host"] == "registry.npmjs.org" and host["allowed"] for host in setup["hosts"])
    assert "is-number works" in result.events("tool_call")[0]["output"]
    assert result.record["verify"]["passed"] and result.patch == b""
