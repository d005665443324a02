"""Remote Docker engines, for real: a second engine in a network namespace of its own (tests/engine_host.py),
reached over ssh through paramiko, over ssh through the OpenSSH client, and over tcp with TLS.

- Every transport carries an attached stream both ways, with the half-close, the exit status, the stderr
  tail and a deadline; an owner that dies stops its remote sandbox by itself, and `airlock gc` removes it.
- `airlock run` sends the sandbox image to an engine that lacks it (ids compared), and `replay` and `doctor`
  work over the other transports; an engine holding another image under the tag gets this machine's.
- A batch spreads over this machine's engine and the second one, and survives losing the second one.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from engine_host import TRANSPORTS, EngineHost
from helpers import PROJECT, SESSION_OWNER, airlock, airlock_env

from orchestrator.demo import CALCULATOR_REPO, TEST_COMMAND, calculator_script
from orchestrator.errors import SandboxError
from orchestrator.providers.scripted import Scripted, ScriptedModelServer, reply, text, tool_use
from orchestrator.sandbox.docker_backend import DockerBackend
from orchestrator.sandbox.engines import ensure_image
from orchestrator.sandbox.spec import DEFAULT_IMAGE, LABEL, OWNER_LABEL, SandboxSpec

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("nsenter", "ip", "dockerd", "/usr/sbin/sshd", "openssl")),
    reason="a second engine in a network namespace needs root, nsenter, ip, dockerd, sshd and openssl (scripts/ensure-test-deps.sh)",
)
FIX = tool_use("edit_file", path="calculator.py", old_str="def multiply(a, b):\n    return a + b", new_str="def multiply(a, b):\n    return a * b")


@pytest.fixture(scope="module")
def engine_host() -> Iterator[EngineHost]:
    host = EngineHost().start()
    try:
        yield host
    finally:
        host.close()


def remote_sandboxes(host: EngineHost) -> list[Any]:
    with contextlib.closing(host.client()) as client:
        return client.containers.list(all=True, filters={"label": [LABEL, f"{OWNER_LABEL}={SESSION_OWNER}"]}, ignore_removed=True)


@pytest.fixture
def remote_leak_check(engine_host: EngineHost) -> Iterator[None]:
    """As the session's check does on this machine's engine: the test leaves no sandbox on the second one."""
    yield
    left = remote_sandboxes(engine_host)
    for container in left:
        container.remove(force=True)
    assert not left, f"sandboxes left on the second engine: {[c.name for c in left]}"


@pytest.fixture
def with_image(engine_host: EngineHost) -> EngineHost:
    with contextlib.closing(engine_host.client()) as client:
        try:
            client.images.get(DEFAULT_IMAGE)
        except docker.errors.ImageNotFound:
            engine_host.load_image(DEFAULT_IMAGE)
    return engine_host


def reach(monkeypatch: pytest.MonkeyPatch, host: EngineHost, transport: str) -> None:
    """This test process reaches the second engine over `transport`, as DOCKER_HOST and the environment say."""
    for key in ("AIRLOCK_DOCKER_SSH", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {**host.env(transport), "DOCKER_HOST": host.url(transport)}.items():
        monkeypatch.setenv(key, value)


def remote_env(host: EngineHost, transport: str, base_url: str | None = None) -> dict[str, str]:
    return airlock_env(base_url, **host.env(transport), DOCKER_HOST=host.url(transport))


# --- first, on the fresh engine: the sandbox image sent there by a run; replay and doctor over other transports --


def test_a_run_sends_the_image_to_an_engine_that_lacks_it_and_replay_reproduces_it(
    engine_host: EngineHost, calculator_repo: Path, tmp_path: Path, docker_client: docker.DockerClient, remote_leak_check: None
) -> None:
    with contextlib.closing(engine_host.client()) as client:
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(DEFAULT_IMAGE, force=True)
    here = docker_client.images.get(DEFAULT_IMAGE).id
    out = tmp_path / "run"
    with ScriptedModelServer(calculator_script()) as api:
        env = remote_env(engine_host, "paramiko", api.base_url)
        proc = airlock("run", str(calculator_repo), "--task", "Fix it.", "--out", str(out), "--verify", TEST_COMMAND, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"sending {DEFAULT_IMAGE} (" in proc.stdout and f"from this machine's engine to {engine_host.url('paramiko')}" in proc.stdout
    assert " MB" in proc.stdout and f"{DEFAULT_IMAGE} is on {engine_host.url('paramiko')}" in proc.stdout  # progress, then done
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "completed" and record["verify"]["passed"] is True
    assert record["sandbox"]["engine"] == engine_host.url("paramiko") and record["sandbox"]["image_id"] == here
    with contextlib.closing(engine_host.client()) as client:
        assert client.images.get(DEFAULT_IMAGE).id == here  # the same image, not one that only has its name
    assert b"+    return a * b\n" in (out / "patch.diff").read_bytes()

    again = airlock("replay", str(out), "--out", str(tmp_path / "replay"), "--ignore-regex", r"in [0-9.]+s", env=remote_env(engine_host, "tls"), timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr  # the image is there now: nothing is sent
    assert "sending" not in again.stdout
    replayed = json.loads((tmp_path / "replay" / "replay.json").read_text())
    assert replayed["identical_patch"] is True and replayed["divergences"] == []
    assert json.loads((tmp_path / "replay" / "run.json").read_text())["sandbox"]["engine"] == engine_host.url("tls")


def test_doctor_checks_a_remote_engine(with_image: EngineHost) -> None:
    doctor = airlock("doctor", env=remote_env(with_image, "openssh"), timeout=120)
    assert "Docker daemon" in doctor.stdout and f"at {with_image.url('openssh')}" in doctor.stdout, doctor.stdout + doctor.stderr
    assert "sandbox image" in doctor.stdout and "lacks" not in doctor.stdout and "not built" not in doctor.stdout


# --- the stream and the owner's lifeline, on every transport -------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_stream_carries_bytes_both_ways_on_every_transport(
    with_image: EngineHost, monkeypatch: pytest.MonkeyPatch, transport: str, remote_leak_check: None
) -> None:
    reach(monkeypatch, with_image, transport)
    box = DockerBackend().start(SandboxSpec(image=DEFAULT_IMAGE, run_id=f"stream-{transport}-{os.getpid()}"))
    try:
        data = os.urandom(3 * 1024 * 1024)
        stream = box.attach(["sh", "-c", "cat; echo finished >&2; exit 7"], user="1000:1000", stdin=True)
        sender = threading.Thread(target=lambda: (stream.send(data), stream.close_stdin()))
        sender.start()  # while the output comes back, as a tar copy-in or the tool server does
        got = bytearray()
        while (chunk := stream.next_stdout(time.monotonic() + 60)) is not None:
            got += chunk
        sender.join(30)
        assert bytes(got) == data  # every byte, in order: the half-close ended `cat`, the frames were taken apart
        assert stream.exit_code() == 7 and stream.stderr_tail == b"finished\n"
        stream.close()

        quiet = box.attach(["sleep", "30"], user="1000:1000", stdin=False)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            quiet.next_stdout(time.monotonic() + 0.5)
        assert time.monotonic() - started < 10  # the deadline holds: a silent box cannot block the host
        quiet.close()
    finally:
        box.remove()


OWNER = """
import sys, time
from orchestrator.sandbox.docker_backend import DockerBackend
from orchestrator.sandbox.spec import SandboxSpec
box = DockerBackend().start(SandboxSpec(image=sys.argv[1], run_id=sys.argv[2]))
print(box.id, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_dead_owner_stops_its_remote_sandbox_and_gc_removes_it(with_image: EngineHost, transport: str, remote_leak_check: None) -> None:
    env = remote_env(with_image, transport)
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, DEFAULT_IMAGE, f"owner-{transport}-{os.getpid()}"],
        env=env, cwd=PROJECT, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert owner.stdout is not None
        box_id = owner.stdout.readline().strip()
        assert box_id, "the owner did not start its sandbox"
        with contextlib.closing(with_image.client()) as client:
            container = client.containers.get(box_id)
            assert container.status == "running"
            os.killpg(owner.pid, signal.SIGKILL)  # however the owner dies, its lifeline closes
            owner.wait(timeout=15)
            deadline = time.monotonic() + 30
            while container.status == "running":
                assert time.monotonic() < deadline, "the sandbox outlived its owner"
                time.sleep(0.2)
                container.reload()
            assert container.status == "exited"
        gc = airlock("gc", env=env, timeout=120)  # another airlock tidies up over the same transport
        assert gc.returncode == 0, gc.stdout + gc.stderr
        assert container.short_id in gc.stdout and remote_sandboxes(with_image) == []
    finally:
        if owner.poll() is None:
            os.killpg(owner.pid, signal.SIGKILL)
            owner.wait()


def tiny_image(client: docker.DockerClient, tag: str, content: bytes) -> str:
    """An image of one file, imported from a tar: different content, different id."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("marker")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    repository, label = tag.split(":")
    client.api.import_image_from_data(buffer.getvalue(), repository=repository, tag=label, changes=["LABEL airlock.test=1"])
    return client.images.get(tag).id


def test_an_engine_holding_another_image_under_the_tag_gets_this_machines(
    engine_host: EngineHost, monkeypatch: pytest.MonkeyPatch, docker_client: docker.DockerClient
) -> None:
    tag = f"airlock-test-tiny-{engine_host.id}:{os.getpid()}"
    reach(monkeypatch, engine_host, "tls")
    remote = engine_host.client()
    try:
        here = tiny_image(docker_client, tag, b"this machine's")
        there = tiny_image(remote, tag, b"another one")
        assert here != there
        lines: list[str] = []
        target = DockerBackend().client
        assert ensure_image(target, tag, where="the second engine", source=docker_client, log=lines.append) == here
        assert remote.images.get(tag).id == here
        assert f"it holds {tag} as another image, {there[7:19]}, which this replaces" in lines[0]
        lines.clear()
        assert ensure_image(target, tag, where="the second engine", source=docker_client, log=lines.append) == here
        assert lines == []  # the same id: nothing is sent again
        docker_client.images.remove(tag)  # this machine has none now: the engine's own is used, as it is
        assert ensure_image(target, tag, where="the second engine", source=docker_client, log=lines.append) == here and lines == []
        with pytest.raises(SandboxError, match="not found on the second engine; build it there"):
            ensure_image(target, "airlock-test-nowhere:1", where="the second engine", source=docker_client, log=lines.append)
    finally:
        for client in (docker_client, remote):
            with contextlib.suppress(docker.errors.ImageNotFound):
                client.images.remove(tag, force=True)
        remote.close()


# --- a batch across two engines, one of which dies -------------------------------------------------------------


def test_a_batch_spreads_over_two_engines_and_survives_losing_one(with_image: EngineHost, tmp_path: Path, docker_client: docker.DockerClient) -> None:
    names = [f"t{i}" for i in range(1, 6)]
    for name in names:
        shutil.copytree(CALCULATOR_REPO, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"id": n, "repo": n, "task": f"Fix multiply. [{n}]"}) + "\n" for n in names))
    out, log = tmp_path / "results", tmp_path / "batch.log"
    remote = with_image.url("tls")
    release = threading.Event()

    def held(request: dict[str, Any]) -> Scripted:  # the first step of every task waits until the engine is killed
        release.wait(120)
        return reply(text("Fixing multiply."), FIX)

    scripts = {f"[{n}]": [held, reply(text("Fixed."))] for n in names}
    with ScriptedModelServer(scripts) as api:
        env = airlock_env(api.base_url, **with_image.env("tls"))
        with open(log, "w") as sink:
            cmd = [
                sys.executable,
                "-m",
                "orchestrator",
                "batch",
                str(tasks),
                "--out",
                str(out),
                "--engine",
                "unix:///var/run/docker.sock=2",
                "--engine",
                f"{remote}=2",
            ]
            proc = subprocess.Popen(cmd, env=env, cwd=PROJECT, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 180
            # Two tasks on each engine, each waiting for its first answer; the model is asked while a sandbox
            # starts, so the sandboxes are waited for too.
            while len(api.requests) < 4 or len(remote_sandboxes(with_image)) < 2 or len(docker_sandboxes(docker_client)) < 2:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            on_remote = [c.labels["airlock.run-id"] for c in remote_sandboxes(with_image)]
            assert len(on_remote) == 2
            with_image.kill_engine()
            release.set()
            code = proc.wait(timeout=300)
        finally:
            release.set()
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    output = log.read_text()
    assert code == 1 and "Traceback" not in output, output
    rows = {row["id"]: row for row in json.loads((out / "summary.json").read_text())["tasks"]}
    lost = [name for name, row in rows.items() if row["status"] != "completed"]
    assert len(lost) == 2 and all(rows[name]["engine"] == remote for name in lost), rows
    for name in lost:
        assert rows[name]["status"] == "sandbox_error" and "stopped answering: a resumed batch runs it again" in rows[name]["error"]
        assert (out / name / "engine-lost.txt").exists()
    done = [name for name in names if name not in lost]
    assert all(rows[name]["engine"] == "unix:///var/run/docker.sock" for name in done)  # the rest went on on this machine
    assert all(b"+    return a * b\n" in (out / name / "patch.diff").read_bytes() for name in done)
    assert f"engine {remote} stopped answering" in output

    # The engine comes back with its lost sandboxes stopped; gc removes them, and a resume runs the lost tasks.
    with_image.start_engine()
    assert {c.labels["airlock.run-id"] for c in remote_sandboxes(with_image)} <= set(on_remote)
    assert airlock("gc", env=remote_env(with_image, "tls"), timeout=120).returncode == 0
    assert remote_sandboxes(with_image) == []
    with ScriptedModelServer({f"[{n}]": [reply(text("Fixing."), FIX), reply(text("Fixed."))] for n in lost}) as api:
        env = airlock_env(api.base_url, **with_image.env("tls"))
        again = airlock("batch", str(tasks), "--out", str(out), "--engine", "unix:///var/run/docker.sock=2", "--engine", f"{remote}=2", env=env, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert sorted(set(api.markers)) == sorted(f"[{n}]" for n in lost)  # only the lost tasks ran again
    assert remote_sandboxes(with_image) == []


def docker_sandboxes(client: docker.DockerClient) -> list[Any]:
    return client.containers.list(filters={"label": [LABEL, f"{OWNER_LABEL}={SESSION_OWNER}"]}, ignore_removed=True)
