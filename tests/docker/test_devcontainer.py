"""A project that brings its environment: `.devcontainer/devcontainer.json` with a Dockerfile (built through
the egress proxy, then the tool runtime added), its postCreateCommand as the setup; and a Dockerfile named
with `--setup dockerfile:PATH`. Full CLI runs, real Docker."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from orchestrator.providers.scripted import reply, text, tool_use
from orchestrator.sandbox.spec import DEFAULT_IMAGE

# The build has no network of its own (a direct connection fails) and the proxy in its environment; the
# label reset makes it an image without airlock's runtime, as a project's own image is.
DOCKERFILE = f"""\
FROM {DEFAULT_IMAGE}
ARG MARK=unset
USER root
SHELL ["/bin/bash", "-c"]
RUN mkdir -p /opt/devtool && echo "$MARK" > /opt/devtool/marker \\
 && if timeout 5 bash -c 'exec 3<>/dev/tcp/1.1.1.1/80' 2>/dev/null; then echo reached; else echo blocked; fi > /opt/devtool/net \\
 && echo "proxy ${{HTTPS_PROXY:+given}}" >> /opt/devtool/net
LABEL airlock.runtime=""
USER 1000
"""
PROBE = "cat /opt/devtool/marker /opt/devtool/net created-by-postcreate.txt"
VERIFY = "grep -qx from-args /opt/devtool/marker && grep -qx created created-by-postcreate.txt"


@pytest.fixture
def devcontainer_repo(calculator_repo: Path, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(calculator_repo, repo)
    (repo / ".devcontainer").mkdir()
    (repo / ".devcontainer" / "Dockerfile").write_text(DOCKERFILE)
    config = {
        "name": "calculator",
        "build": {"dockerfile": "Dockerfile", "context": "..", "args": {"MARK": "from-args"}},
        "postCreateCommand": "echo created > created-by-postcreate.txt",
        "forwardPorts": [8000],
    }
    (repo / ".devcontainer" / "devcontainer.json").write_text("// the team's editor set-up\n" + json.dumps(config, indent=2))
    return repo


def test_a_devcontainers_dockerfile_is_the_environment_of_agent_and_verify(run_scripted, devcontainer_repo: Path) -> None:
    turns = [reply(tool_use("run_bash", command=PROBE)), reply(text("done"))]
    result, _ = run_scripted(devcontainer_repo, turns, "--setup", "auto", "--verify", VERIFY)
    assert result.exit_code == 0, result.stderr + result.stdout
    record = result.record
    assert record["status"] == "completed" and record["verify"]["passed"] is True
    [call] = result.events("tool_call")
    assert call["output"].startswith("from-args\nblocked\nproxy given\ncreated\n"), call["output"]
    project = record["sandbox"]["project_image"]
    assert project["source"] == ".devcontainer/devcontainer.json" and project["cache"] == "build" and project["image"].startswith("airlock-build:")
    assert record["sandbox"]["runtime_image"].startswith("airlock-image:")
    assert record["setup"]["commands"] == ["echo created > created-by-postcreate.txt"]
    assert "`forwardPorts` ignored: a sandbox has no network" in result.stdout
    assert "RUN mkdir -p /opt/devtool" in (result.out / "image-build.log").read_text()
    assert result.patch == b""  # what the setup made in the repo is the environment's, never the patch's

    # Nothing changed: the image and the environment are found by their keys, nothing is built again.
    again, _ = run_scripted(devcontainer_repo, [reply(text("done"))], "--setup", "auto")
    assert again.exit_code == 0, again.stderr + again.stdout
    assert again.record["sandbox"]["project_image"]["cache"] == "hit" and again.record["setup"]["cache"] == "hit"

    # A changed build argument is another image.
    config = json.loads((devcontainer_repo / ".devcontainer" / "devcontainer.json").read_text().split("\n", 1)[1])
    config["build"]["args"]["MARK"] = "changed"
    (devcontainer_repo / ".devcontainer" / "devcontainer.json").write_text(json.dumps(config))
    changed, _ = run_scripted(devcontainer_repo, [reply(tool_use("run_bash", command="cat /opt/devtool/marker")), reply(text("done"))], "--setup", "auto")
    assert changed.exit_code == 0, changed.stderr + changed.stdout
    assert changed.record["sandbox"]["project_image"]["cache"] == "build"
    assert changed.events("tool_call")[0]["output"].startswith("changed\n")


def test_setup_dockerfile_builds_the_named_dockerfile_from_the_repo_root(run_scripted, calculator_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(calculator_repo, repo)
    (repo / "ci").mkdir()
    (repo / "ci" / "Dockerfile").write_text(f"FROM {DEFAULT_IMAGE}\nCOPY calculator.py /opt/copied/calculator.py\n")
    turns = [reply(tool_use("run_bash", command="grep -c def /opt/copied/calculator.py")), reply(text("done"))]
    result, _ = run_scripted(repo, turns, "--setup", "dockerfile:ci/Dockerfile")
    assert result.exit_code == 0, result.stderr + result.stdout
    assert result.events("tool_call")[0]["output"].startswith("3\n")
    assert result.record["sandbox"]["project_image"]["source"] == "dockerfile:ci/Dockerfile"
    assert "runtime_image" not in result.record["sandbox"]  # built FROM the sandbox image, it carries the runtime


def test_a_dockerfile_that_fails_ends_the_run_as_setup_failed_with_its_cause(run_scripted, calculator_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(calculator_repo, repo)
    (repo / "Dockerfile").write_text(f"FROM {DEFAULT_IMAGE}\nRUN echo about to fail && exit 7\n")
    result, api = run_scripted(repo, [reply(text("done"))], "--setup", "dockerfile:Dockerfile")
    assert result.exit_code != 0 and result.record["status"] == "setup_failed", result.stdout
    assert "did not build" in result.record["error"] and "returned a non-zero code: 7" in result.record["error"]
    assert "about to fail" in (result.out / "image-build.log").read_text()
    assert api.requests == []  # the model is never asked
