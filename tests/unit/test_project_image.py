"""What a devcontainer.json or `--setup dockerfile:PATH` makes of a run: parsed with no Docker engine,
refusals in one line (exit 2), nothing read outside the repo."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import airlock, airlock_env

from orchestrator.errors import UsageError
from orchestrator.policy.model import SetupPolicy
from orchestrator.run.image_phase import build_cause
from orchestrator.run.project_image import ProjectImage, project_image
from orchestrator.run.setup_causes import CauseWatch
from orchestrator.sandbox.docker_build import base_images

NO_DOCKER = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}


def devcontainer(repo: Path, config: object, *, raw: str | None = None) -> Path:
    (repo / ".devcontainer").mkdir(parents=True, exist_ok=True)
    (repo / ".devcontainer" / "devcontainer.json").write_text(raw if raw is not None else json.dumps(config))
    return repo


def test_a_devcontainer_with_comments_and_every_kind_of_command(tmp_path: Path) -> None:
    (tmp_path / ".devcontainer").mkdir()
    (tmp_path / ".devcontainer" / "Dockerfile").write_text("FROM x\n")
    raw = """{
      // JSON with comments, as editors write it
      "build": {"dockerfile": "Dockerfile", "context": "..", "args": {"V": "1"}, "target": "dev", "cacheFrom": "x"},
      "onCreateCommand": ["pip", "install", "-e", "."],
      "updateContentCommand": {"a": "make deps", "b": ["npm", "ci"]},
      "postCreateCommand": "echo done",
      "postStartCommand": "ignored",
      "forwardPorts": [8000],
    }"""
    found = project_image(devcontainer(tmp_path, None, raw=raw), ["auto"], [])
    assert found == ProjectImage(
        source=".devcontainer/devcontainer.json", dockerfile=".devcontainer/Dockerfile", context="", args={"V": "1"}, target="dev",
        commands=["pip install -e .", "make deps", "npm ci", "echo done"],
        ignored=[
            ".devcontainer/devcontainer.json: `postStartCommand` ignored: no command runs at a sandbox's start",
            ".devcontainer/devcontainer.json: `forwardPorts` ignored: a sandbox has no network",
            ".devcontainer/devcontainer.json: `build.cacheFrom` ignored: airlock does not know it",
        ],
    )  # fmt: skip


def test_only_auto_looks_for_a_devcontainer(tmp_path: Path) -> None:
    devcontainer(tmp_path, {"image": "node:22"})
    assert project_image(tmp_path, ["auto"], []) == ProjectImage(source=".devcontainer/devcontainer.json", image="node:22")
    assert project_image(tmp_path, ["make deps"], []) is None
    assert project_image(tmp_path, ["auto"], [".devcontainer/**"]) is None  # a hidden file is never read


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"image": "x", "privileged": True}, "asks for `privileged`, which airlock refuses: a sandbox never runs privileged"),
        ({"image": "x", "capAdd": ["SYS_PTRACE"]}, "asks for `capAdd`"),
        ({"image": "x", "runArgs": ["--network=host"]}, "asks for `runArgs`"),
        ({"image": "x", "mounts": ["source=/,target=/host,type=bind"]}, "asks for `mounts`"),
        ({"image": "x", "features": {"ghcr.io/devcontainers/features/go:1": {}}}, "asks for `features`"),
        ({"dockerComposeFile": "compose.yml", "service": "app"}, "asks for `dockerComposeFile`"),
        ({"build": {"dockerfile": "../../etc/Dockerfile"}}, "leaves the repo"),
        ({"build": {"dockerfile": "/etc/Dockerfile"}}, "is an absolute path"),
        ({"build": {"dockerfile": "Dockerfile", "context": "../.."}}, "leaves the repo"),
        ({"build": {"dockerfile": "Missing"}}, "is not in the repo"),
        ({"name": "no image"}, "give `image` or `build.dockerfile`"),
        ({"image": "x", "postCreateCommand": 7}, "expected a command string"),
    ],
)
def test_what_cannot_be_honoured_is_refused(tmp_path: Path, config: object, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("`", "`")):
        project_image(devcontainer(tmp_path, config), ["auto"], [])


def test_a_dockerfile_reached_through_a_symlink_is_not_read(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "Dockerfile").write_text("FROM x\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    os.symlink(outside, repo / "ci")
    with pytest.raises(UsageError, match="no such file in the repo"):
        project_image(repo, ["dockerfile:ci/Dockerfile"], [])


def test_the_cli_refuses_a_privileged_devcontainer_in_one_line_with_exit_2(calculator_repo: Path, tmp_path: Path) -> None:
    devcontainer(calculator_repo, {"image": "airlock-sandbox:latest", "privileged": True})
    proc = airlock(
        "run", str(calculator_repo), "--task", "x", "--setup", "auto", "--out", str(tmp_path / "out"), env=airlock_env("http://127.0.0.1:9", **NO_DOCKER)
    )
    assert proc.returncode == 2, proc.stderr
    assert (
        proc.stderr.strip() == "airlock: error: .devcontainer/devcontainer.json asks for `privileged`, which airlock refuses: a sandbox never runs privileged"
    )
    assert not (tmp_path / "out" / "run.json").exists()


def test_a_failed_builds_cause_is_named_from_its_output() -> None:
    causes = CauseWatch()
    causes.line("Step 3/4 : RUN pip install iniconfig")
    assert build_cause(causes, SetupPolicy()) == ""
    causes.line("  WARNING: Retrying ... SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed'))")
    assert build_cause(causes, SetupPolicy()).startswith("a certificate on the way to the registry is not trusted by the image")
    missing = CauseWatch()
    missing.line("ERROR: No matching distribution found for no-such-package-xyz")
    assert build_cause(missing, SetupPolicy()) == "the registry has no package 'no-such-package-xyz' (or no version that fits): "


def test_the_build_key_covers_the_images_a_dockerfile_starts_from_not_its_stages() -> None:
    dockerfile = "ARG BASE=debian\nFROM --platform=linux/amd64 node:22 AS deps\nfrom deps as test\nFROM ${BASE}\nFROM golang:1.23\nCOPY --from=deps /x /x\n"
    assert base_images(dockerfile) == ["node:22", "golang:1.23"]
