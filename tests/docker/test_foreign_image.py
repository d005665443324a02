"""--image on an image that is not airlock's: no Python, git, tar or ripgrep of its own, an entrypoint, a
VOLUME, its own PATH and root as its user. The tool runtime is added to it (a derived image), and the run
is the same as on the sandbox image: every tool works, the patch is exact, the hardening is unchanged."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
from helpers import SESSION_OWNER, airlock

from orchestrator.doctor import run_checks
from orchestrator.providers.scripted import reply, text, tool_use
from orchestrator.sandbox.docker_tool_runtime import DERIVED_LABEL, FROM_LABEL
from orchestrator.sandbox.spec import DEFAULT_IMAGE

TEST_IMAGE_LABEL = "airlock.test-image"
MULTIPLY_ADDS, MULTIPLY = "def multiply(a, b):\n    return a + b", "def multiply(a, b):\n    return a * b"
# Everything airlock's tools once took from the image, gone; the runtime's copy too.
STRIP = (
    "rm -rf /usr/bin/python* /usr/lib/python3* /usr/local/lib/python3* /usr/bin/git* /usr/lib/git-core /usr/bin/tar /usr/bin/rg "
    "/opt/airlock-runtime && mkdir -p /opt/team/bin /data && printf '#!/bin/sh\\necho team tool\\n' > /opt/team/bin/teamtool "
    "&& chmod 755 /opt/team/bin/teamtool"
)


def make_image(client: docker.DockerClient, name: str, script: str, changes: list[str]) -> str:
    """An image committed from the sandbox image after `script` ran in it as root, with no runtime label."""
    container = client.containers.run(DEFAULT_IMAGE, ["sh", "-c", script], user="root", detach=True, labels={TEST_IMAGE_LABEL: SESSION_OWNER})
    try:
        assert container.wait(timeout=120)["StatusCode"] == 0, container.logs().decode()
        changes = ["LABEL airlock.runtime=", f"LABEL {TEST_IMAGE_LABEL}={SESSION_OWNER}", *changes]
        image = container.commit(repository="airlock-test-foreign", tag=name, changes=changes)
    finally:
        container.remove(force=True)
    return str(image.id)


@pytest.fixture(scope="module")
def foreign_images(docker_client: docker.DockerClient) -> Iterator[dict[str, str]]:
    changes = [
        "ENV PATH=/opt/team/bin:/usr/local/bin:/usr/bin:/bin", "ENV TEAM_SETTING=from-the-image", "USER root", "VOLUME /data",
        'ENTRYPOINT ["/no/such/entrypoint"]', 'CMD ["--serve"]',
    ]  # fmt: skip
    images = {
        "plain": make_image(docker_client, "plain", STRIP, changes),
        "musl": make_image(docker_client, "musl", f"{STRIP} && touch /lib/ld-musl-x86_64.so.1", []),
        "nopip": make_image(docker_client, "nopip", "rm -rf /usr/lib/python3/dist-packages/pip* /usr/bin/pip*", []),
    }
    try:
        yield {name: f"airlock-test-foreign:{name}" for name in images}
    finally:
        for image_id in images.values():
            for derived in docker_client.images.list(filters={"label": [DERIVED_LABEL, f"{FROM_LABEL}={image_id}"]}):
                with contextlib.suppress(docker.errors.APIError):
                    docker_client.images.remove(derived.id, force=True)
            with contextlib.suppress(docker.errors.APIError):
                docker_client.images.remove(image_id, force=True)


def test_the_image_really_lacks_what_the_tools_need(docker_client: docker.DockerClient, foreign_images: dict[str, str]) -> None:
    probe = "for p in python3 python git tar rg; do command -v $p && exit 1; done; test ! -e /opt/airlock-runtime"
    out = docker_client.containers.run(foreign_images["plain"], ["-c", probe], entrypoint="/bin/sh", network_mode="none", tmpfs={"/data": ""}, remove=True)
    assert out == b""


def test_a_full_run_on_an_image_without_python_git_or_tar(run_scripted, calculator_repo: Path, tmp_path: Path, foreign_images: dict[str, str]) -> None:
    probe = 'command -v python3 || echo no-python; echo "uid=$(id -u) $TEAM_SETTING"; teamtool; echo "$PATH"; touch /data/x && ls /data'
    turns = [
        reply(tool_use("run_bash", command=probe)),
        reply(tool_use("list_dir", path=".")),
        reply(tool_use("search", pattern="def multiply", path=".")),
        reply(tool_use("read_file", path="calculator.py")),
        reply(tool_use("edit_file", path="calculator.py", old_str=MULTIPLY_ADDS, new_str=MULTIPLY)),
        reply(tool_use("write_file", path="notes/fixed.txt", content="multiply multiplies\n")),
        reply(text("done")),
    ]
    before = {p.relative_to(calculator_repo).as_posix(): p.read_bytes() for p in calculator_repo.rglob("*") if p.is_file()}
    result, _ = run_scripted(calculator_repo, turns, "--image", foreign_images["plain"], "--verify", "grep -q 'a \\* b' calculator.py")

    assert result.exit_code == 0, result.stderr + result.stdout
    record = result.record
    assert record["status"] == "completed" and record["verify"]["passed"] is True
    assert record["sandbox"]["image"] == foreign_images["plain"] and record["sandbox"]["runtime_image"].startswith("airlock-image:")
    calls = result.events("tool_call")
    assert [call["name"] for call in calls] == ["run_bash", "list_dir", "search", "read_file", "edit_file", "write_file"]
    assert not any(call["is_error"] for call in calls), calls
    shell = calls[0]["output"]
    # The image's python3 is the project's, and there is none; its user is replaced; its own variables and PATH stay.
    assert "no-python" in shell and "uid=1000 from-the-image" in shell and "team tool" in shell
    assert shell.splitlines()[3].startswith("/opt/team/bin:") and shell.splitlines()[3].endswith(":/opt/airlock-runtime/bin")
    assert "x" in shell.splitlines()[4:]  # the VOLUME folder is a writable tmpfs, not an anonymous volume
    assert "calculator.py:" in calls[2]["output"] and "def multiply" in calls[2]["output"]

    # The patch is exact: applied to a fresh copy, it gives what the agent left.
    fresh = tmp_path / "fresh"
    shutil.copytree(calculator_repo, fresh)
    applied = subprocess.run(["git", "apply", "--check", "-"], input=result.patch, cwd=fresh, capture_output=True)
    assert applied.returncode == 0, applied.stderr
    subprocess.run(["git", "apply", "-"], input=result.patch, cwd=fresh, check=True)
    after = {p.relative_to(fresh).as_posix(): p.read_bytes() for p in fresh.rglob("*") if p.is_file()}
    expected = before | {"notes/fixed.txt": b"multiply multiplies\n"}
    expected["calculator.py"] = before["calculator.py"].replace(MULTIPLY_ADDS.encode(), MULTIPLY.encode())
    assert after == expected


def test_a_setup_on_an_image_without_pip_gives_its_virtualenv_a_pip_of_its_own(run_scripted, tmp_path: Path, foreign_images: dict[str, str]) -> None:
    """The sandbox image's pip serves the virtualenv; an image with Python but no pip gets a copy (ensurepip)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "requirements.txt").write_text(f"# nothing to install, a key of its own: {repo}\n")
    turns = [reply(tool_use("run_bash", command="pip --version; pip3 --version")), reply(text("done"))]
    for image, pip in (
        (DEFAULT_IMAGE, "/usr/lib/python3/dist-packages/pip"),
        (foreign_images["nopip"], "/opt/airlock-env/venv/lib/python3.11/site-packages/pip"),
    ):
        result, _ = run_scripted(repo, turns, "--image", image, "--setup", "auto")
        assert result.exit_code == 0, result.stdout + result.stderr
        assert result.record["setup"]["cache"] == "build" and result.record["setup"]["commands"][1:] == ["pip install -r requirements.txt"]
        versions = result.events("tool_call")[0]["output"].splitlines()
        assert len(versions) >= 2 and all(f"from {pip} (python 3" in line for line in versions[:2]), versions


def test_a_musl_image_is_refused_in_one_line(calculator_repo: Path, tmp_path: Path, foreign_images: dict[str, str]) -> None:
    proc = airlock("run", str(calculator_repo), "--task", "x", "--out", str(tmp_path / "out"), "--image", foreign_images["musl"])
    assert proc.returncode == 2, proc.stderr
    assert "musl userland" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out" / "run.json").exists()


def test_the_derived_image_is_reused_and_carries_both_ids(docker_client: docker.DockerClient, foreign_images: dict[str, str]) -> None:
    derived = docker_client.images.list(filters={"label": DERIVED_LABEL})
    plain = docker_client.images.get(foreign_images["plain"]).id
    mine = [image for image in derived if image.labels.get(FROM_LABEL) == plain]
    assert len(mine) == 1, json.dumps([image.labels for image in derived])
    assert mine[0].labels["airlock.derived.runtime"] == docker_client.images.get(DEFAULT_IMAGE).id


def test_doctor_judges_a_foreign_image_by_what_a_run_needs_of_it(foreign_images: dict[str, str]) -> None:
    plain = {check.name: check for check in run_checks(foreign_images["plain"])}
    assert plain["sandbox image"].ok and "not airlock's; a run adds the tool runtime of airlock-sandbox:latest" in plain["sandbox image"].detail
    assert plain["gVisor (runsc)"].ok and "gVisor's kernel" in plain["gVisor (runsc)"].detail  # its entrypoint does not get in the way
    musl = {check.name: check for check in run_checks(foreign_images["musl"])}
    assert not musl["sandbox image"].ok and "has a musl userland" in musl["sandbox image"].detail
