"""`--backend kubernetes` end to end: the real CLI, the official client, and a cluster.

No cluster can run on these machines, so by default the cluster is tests/kube_fake.py: an API server of our
own whose pods are real, equally hardened containers on the local Docker engine. `make test-kubernetes`
runs the same tests against the cluster KUBECONFIG names (AIRLOCK_TEST_KUBERNETES=real; the image from
AIRLOCK_TEST_IMAGE, pushed to a registry the cluster pulls from); the few that need the fake's knobs
(a network plugin that ignores NetworkPolicy, an old exec protocol) are skipped there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import PROJECT, Result
from kube_cluster import IMAGE, NAMESPACE, REAL, Cluster
from kube_fake import V4

from orchestrator.demo import CALCULATOR_REPO, TEST_COMMAND, calculator_script
from orchestrator.errors import SandboxError
from orchestrator.providers.scripted import ScriptedModelServer, reply, text, tool_use
from orchestrator.sandbox.kube_manifests import NETWORK_POLICY, pod_name
from orchestrator.sandbox.spec import SandboxSpec

fake_only = pytest.mark.skipif(REAL, reason="needs the fake cluster's knobs")


def run_in_pod(cluster: Cluster, repo: Path, out: Path, turns: list[Any], *extra: str) -> tuple[Result, ScriptedModelServer]:
    with ScriptedModelServer(turns) as api:
        proc = cluster.airlock("run", str(repo), "--task", "Do the task.", "--out", str(out), "--backend", "kubernetes", "--namespace", NAMESPACE,
                               "--image", IMAGE, *extra, base_url=api.base_url)  # fmt: skip
    return Result(proc.returncode, proc.stdout, proc.stderr, out), api


# --- the calculator exercise in a pod ----------------------------------------------------------------------------


def test_the_calculator_exercise_runs_in_a_hardened_pod(cluster: Cluster, calculator_repo: Path, tmp_path: Path) -> None:
    result, api = run_in_pod(cluster, calculator_repo, tmp_path / "out", calculator_script(), "--verify", TEST_COMMAND)
    assert result.exit_code == 0, result.stdout + result.stderr
    record = result.record
    assert record["status"] == "completed" and record["verify"]["passed"] is True and record["steps"] == 5
    assert record["sandbox"]["backend"] == "kubernetes" and record["sandbox"]["namespace"] == NAMESPACE
    assert record["sandbox"]["network_policy"] == NETWORK_POLICY and record["sandbox"]["tools_config_map"].startswith("airlock-tools-")
    calls = result.events("tool_call")
    assert "3 failed, 1 passed" in calls[0]["output"] and "4 passed" in calls[3]["output"]
    assert b"-    return a + b\n+    return a * b\n" in result.patch and len(api.requests) == 5
    if cluster.fake is not None:  # what the API server was given: validated, and the pod's container as hardened as Docker's
        pods = [obj for obj in cluster.fake.created if obj["kind"] == "Pod" and obj["metadata"]["labels"]["airlock.run-id"] == record["run_id"]]
        assert len(pods) == 2  # the agent's, and the fresh one verify ran in
        assert all(pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True for pod in pods)
        assert any(obj["kind"] == "NetworkPolicy" for obj in cluster.fake.created)


def test_the_tool_code_and_the_root_filesystem_are_read_only_in_the_pod(cluster: Cluster, calculator_repo: Path, tmp_path: Path) -> None:
    probe = "id -u; touch /opt/airlock/tools/x / 2>&1 | sed 's/.*: //'; cat /proc/self/status | grep -E '^(CapEff|NoNewPrivs)'"
    result, _ = run_in_pod(cluster, calculator_repo, tmp_path / "out", [reply(tool_use("run_bash", command=probe)), reply(text("done"))])
    assert result.exit_code == 0, result.stdout + result.stderr
    output = result.events("tool_call")[0]["output"]
    assert output.startswith("1000\n") and "Permission denied" in output and "Read-only file system" in output
    assert "CapEff:\t0000000000000000" in output and "NoNewPrivs:\t1" in output


# --- ends: Ctrl-C, a killed airlock, a pod past its deadline -------------------------------------------------------

BUSY = [reply(tool_use("write_file", path="notes.txt", content="written before the interrupt\n"), tool_use("run_bash", command="sleep 300"))]


@contextlib.contextmanager
def busy_run(cluster: Cluster, repo: Path, out: Path) -> Iterator[subprocess.Popen[str]]:
    """`airlock run` in a pod, returned once its command `sleep 300` runs; killed at the end whatever happened."""
    with ScriptedModelServer(list(BUSY)) as api:
        cmd = [sys.executable, "-m", "orchestrator", "run", str(repo), "--task", "Do the task.", "--out", str(out), "--backend", "kubernetes",
               "--namespace", NAMESPACE, "--image", IMAGE]  # fmt: skip
        proc = subprocess.Popen(
            cmd, env=cluster.env(api.base_url), cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 120
            while not (out / "trajectory.jsonl").exists() or '"write_file"' not in (out / "trajectory.jsonl").read_text():
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.1)
            time.sleep(1.0)  # the second tool call, the sleep, has started
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_ctrl_c_keeps_the_work_and_removes_the_pod(cluster: Cluster, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hello.txt").write_text("hello\n")
    out = tmp_path / "out"
    with busy_run(cluster, repo, out) as proc:
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    assert time.monotonic() - started < 20
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "interrupted" and record["patch"]["files_changed"] == 1
    assert b"+written before the interrupt\n" in (out / "patch.diff").read_bytes()
    assert [pod for pod in cluster.pods() if pod["metadata"]["name"] == pod_name(record["run_id"])] == []


def test_a_killed_airlocks_pod_ends_by_itself_and_gc_removes_it(cluster: Cluster, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    out = tmp_path / "out"
    with busy_run(cluster, repo, out) as proc:
        os.killpg(proc.pid, signal.SIGKILL)  # no clean-up at all: only the lifeline and the cluster are left
        proc.wait()
    name = pod_name(json.loads((out / "run.json").read_text())["run_id"])
    deadline = time.monotonic() + 60
    while (pods := [pod for pod in cluster.pods() if pod["metadata"]["name"] == name]) and pods[0]["status"]["phase"] == "Running":
        assert time.monotonic() < deadline, "the pod outlived its owner"
        time.sleep(0.3)
    assert pods and pods[0]["status"]["phase"] in ("Succeeded", "Failed")  # the lifeline closed: the main process ended
    gc = cluster.airlock("gc", "--backend", "kubernetes", "--namespace", NAMESPACE)
    assert gc.returncode == 0 and name in gc.stdout, gc.stdout + gc.stderr
    assert cluster.pods() == []


def test_a_pod_past_its_deadline_is_stopped_by_the_cluster_and_removed_by_gc(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = cluster.backend(monkeypatch)
    spec = SandboxSpec(image=IMAGE, run_id=f"deadline-{os.getpid()}", lifetime_s=4)
    backend.prepare(spec, lambda _line: None)
    box = backend.start(spec)
    try:
        deadline = time.monotonic() + 90
        while box.failure() is None:
            assert time.monotonic() < deadline, "the cluster did not stop the pod at its activeDeadlineSeconds"
            time.sleep(0.5)
        assert "activeDeadlineSeconds" in (box.failure() or "")
        assert pod_name(spec.run_id) in backend.remove_stale()
    finally:
        with contextlib.suppress(SandboxError):
            box.remove()


# --- refusals: egress open, an old exec protocol --------------------------------------------------------------------


@fake_only
def test_the_egress_probe_refuses_a_cluster_that_does_not_enforce_network_policy(cluster: Cluster, calculator_repo: Path, tmp_path: Path) -> None:
    assert cluster.fake is not None
    cluster.fake.enforce = False  # a network plugin that ignores NetworkPolicy: the pod can reach the API service
    result, api = run_in_pod(cluster, calculator_repo, tmp_path / "out", calculator_script())
    assert result.exit_code == 3, result.stdout + result.stderr
    error = result.record["error"]
    assert "egress from the sandbox pod is open: it reached tcp" in error and f"{NETWORK_POLICY} in namespace {NAMESPACE} is not enforced" in error
    assert "refusing to run" in error and api.requests == []  # the agent never started


@fake_only
def test_an_api_server_without_the_v5_exec_protocol_is_refused(cluster: Cluster, calculator_repo: Path, tmp_path: Path) -> None:
    assert cluster.fake is not None
    cluster.fake.protocols = (V4,)
    result, api = run_in_pod(cluster, calculator_repo, tmp_path / "out", calculator_script())
    assert result.exit_code == 3 and "not v5.channel.k8s.io" in result.record["error"], result.stdout + result.stderr
    assert api.requests == []


# --- doctor and batch -----------------------------------------------------------------------------------------------


def test_doctor_creates_a_pod_execs_and_finds_egress_denied(cluster: Cluster) -> None:
    doctor = cluster.airlock("doctor", "--backend", "kubernetes", "--namespace", NAMESPACE, "--image", IMAGE)
    out = doctor.stdout
    assert "Kubernetes API" in out and "sandbox pod" in out and "egress" in out, out + doctor.stderr
    assert "denied: the probe in the pod reached nothing" in out and "FAIL" not in out.split("ANTHROPIC_API_KEY")[0], out


@fake_only
def test_doctor_says_when_the_image_cannot_be_pulled_or_egress_is_open(cluster: Cluster) -> None:
    assert cluster.fake is not None
    missing = cluster.airlock("doctor", "--backend", "kubernetes", "--namespace", NAMESPACE, "--image", "registry.invalid/airlock-sandbox:nope")
    assert missing.returncode == 1 and "cannot be pulled (ErrImagePull" in missing.stdout, missing.stdout
    cluster.fake.enforce = False
    open_ = cluster.airlock("doctor", "--backend", "kubernetes", "--namespace", NAMESPACE, "--image", IMAGE)
    assert open_.returncode == 1 and "egress from the sandbox pod is open" in open_.stdout, open_.stdout


def test_a_batch_runs_its_tasks_as_pods(cluster: Cluster, tmp_path: Path) -> None:
    for name in ("k1", "k2"):
        shutil.copytree(CALCULATOR_REPO, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"id": n, "repo": n, "task": f"Fix it. [{n}]", "image": IMAGE}) + "\n" for n in ("k1", "k2")))
    fix = tool_use("edit_file", path="calculator.py", old_str="def multiply(a, b):\n    return a + b", new_str="def multiply(a, b):\n    return a * b")
    with ScriptedModelServer({f"[{n}]": [reply(fix), reply(text("Fixed."))] for n in ("k1", "k2")}) as api:
        proc = cluster.airlock("batch", str(tasks), "--out", str(tmp_path / "results"), "--backend", "kubernetes", "--namespace", NAMESPACE,
                               "--jobs", "2", base_url=api.base_url)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert [row["status"] for row in summary["tasks"]] == ["completed", "completed"]
    for name in ("k1", "k2"):
        record = json.loads((tmp_path / "results" / name / "run.json").read_text())
        assert record["sandbox"]["backend"] == "kubernetes" and b"+    return a * b" in (tmp_path / "results" / name / "patch.diff").read_bytes()
