"""The Kubernetes objects of a sandbox: valid against the Kubernetes 1.33 schema (strict: no unknown field),
and every Docker hardening there in its Kubernetes form. No cluster and no client needed."""

from __future__ import annotations

import time

import kubernetes_validate
import pytest

from orchestrator.sandbox.kube_manifests import (
    NETWORK_POLICY,
    deny_all_policy,
    label_value,
    pod_name,
    sandbox_pod,
    tools_config_map,
)  # fmt: skip
from orchestrator.sandbox.kubernetes_backend import abandoned, tool_files
from orchestrator.sandbox.spec import DEADLINE_LABEL, SANDBOX_ENV, SandboxSpec

K8S = "1.33"
SPEC = SandboxSpec(image="registry.example/airlock-sandbox:1", run_id="20261201-101010-a1b2c3", cpus=1.5, memory=2 * 1024**3, disk=1024**3)


def valid(manifest: dict) -> dict:
    kubernetes_validate.validate(manifest, K8S, strict=True)  # raises ValidationError on any problem
    return manifest


@pytest.fixture
def pod(monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("AIRLOCK_OWNER", "CI job #42 (nightly)")  # not a valid label value as it is
    return valid(sandbox_pod(SPEC, "airlock", "airlock-tools-0123456789abcdef"))


def test_the_pod_carries_every_docker_hardening(pod: dict) -> None:
    spec = pod["spec"]
    [container] = spec["containers"]
    security = container["securityContext"]
    # cap_drop ALL, no-new-privileges, read_only, user, Docker's default seccomp profile
    assert security["capabilities"] == {"drop": ["ALL"]} and security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True and security["privileged"] is False
    for context in (security, spec["securityContext"]):
        assert (context["runAsNonRoot"], context["runAsUser"], context["runAsGroup"]) == (True, 1000, 1000)
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    # nano_cpus and mem_limit (swap equal: none), as requests equal to limits: the Guaranteed class
    assert container["resources"]["requests"] == container["resources"]["limits"] == {"cpu": "1500m", "memory": str(2 * 1024**3)}
    # every writable place a size-limited tmpfs: emptyDirs in memory with a size limit; the tool code read-only
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    assert set(mounts) == {"/workspace", "/var/lib/airlock", "/tmp", "/home/airlock", "/opt/airlock/tools"}
    for path, mount in mounts.items():
        volume = volumes[mount["name"]]
        if path == "/opt/airlock/tools":
            assert mount["readOnly"] is True and "configMap" in volume and volume["configMap"]["defaultMode"] == 0o444
        else:
            assert volume["emptyDir"]["medium"] == "Memory" and int(volume["emptyDir"]["sizeLimit"]) > 0
    assert volumes["workspace"]["emptyDir"]["sizeLimit"] == str(1024**3)
    assert not any(key in volume for volume in spec["volumes"] for key in ("hostPath", "persistentVolumeClaim", "nfs"))
    # no socket, no token, no host environment: no service account token, no service links, only SANDBOX_ENV
    assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
    assert container["env"] == [{"name": key, "value": value} for key, value in SANDBOX_ENV.items()]
    assert (spec["hostNetwork"], spec["hostPID"], spec["hostIPC"]) == (False, False, False)
    # the lifeline (stdin held by the owner) and a deadline the cluster enforces; init: tini
    assert container["stdin"] is True and container["stdinOnce"] is True and container["tty"] is False
    assert container["command"] == ["tini", "-s", "--", "cat"]
    assert spec["restartPolicy"] == "Never" and spec["activeDeadlineSeconds"] == int(SPEC.lifetime_s)
    assert "runtimeClassName" not in spec and "nodeSelector" not in spec


def test_the_pods_labels_are_valid_and_the_owner_is_kept_exactly(pod: dict) -> None:
    meta = pod["metadata"]
    assert meta["name"] == "airlock-20261201-101010-a1b2c3" == pod_name(SPEC.run_id)
    assert meta["labels"]["airlock.sandbox"] == "1" and meta["labels"]["airlock.run-id"] == SPEC.run_id
    assert meta["labels"]["airlock.owner"] == "CI-job-42-nightly" and meta["annotations"]["airlock.owner"] == "CI job #42 (nightly)"
    assert int(meta["annotations"][DEADLINE_LABEL]) > time.time()


def test_runtime_class_and_node_selector_come_from_the_policy() -> None:
    spec = SandboxSpec(image="i:1", run_id="r", runtime_class="gvisor", node_selector={"pool": "sandboxes", "kubernetes.io/arch": "amd64"})
    pod = valid(sandbox_pod(spec, "ns", "airlock-tools-x"))
    assert pod["spec"]["runtimeClassName"] == "gvisor"
    assert pod["spec"]["nodeSelector"] == {"pool": "sandboxes", "kubernetes.io/arch": "amd64"}


def test_the_network_policy_denies_all_traffic_of_sandbox_pods() -> None:
    policy = valid(deny_all_policy("airlock"))
    assert policy["metadata"]["name"] == NETWORK_POLICY
    assert policy["spec"] == {"podSelector": {"matchLabels": {"airlock.sandbox": "1"}}, "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": []}


def test_the_tool_code_is_one_immutable_config_map_named_by_its_content() -> None:
    files = tool_files()
    config = valid(tools_config_map("airlock", files))
    assert config["immutable"] is True and set(config["data"]) == set(files) >= {"server.py", "baseline.py", "egress_probe.py"}
    assert tools_config_map("airlock", files)["metadata"]["name"] == config["metadata"]["name"]
    assert tools_config_map("airlock", {**files, "server.py": "changed"})["metadata"]["name"] != config["metadata"]["name"]
    assert len("".join(files.values()).encode()) < 1024 * 1024  # a ConfigMap holds at most 1 MiB


def test_an_invalid_manifest_is_refused_by_the_schema() -> None:
    broken = sandbox_pod(SPEC, "airlock", "t")
    broken["spec"]["containers"][0]["securityContext"]["dropAllCapabilities"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        valid(broken)


@pytest.mark.parametrize(("value", "label"), [("pytest-1-ab", "pytest-1-ab"), ("a b/c", "a-b-c"), ("-x-", "x"), ("é" * 70, "")])
def test_label_values(value: str, label: str) -> None:
    assert label_value(value) == label


def test_abandoned_pods() -> None:
    now = time.time()

    def pod(phase: str, deadline: float) -> dict:
        return {"metadata": {"annotations": {DEADLINE_LABEL: str(int(deadline))}}, "status": {"phase": phase}}

    assert not abandoned(pod("Running", now + 60), now) and not abandoned(pod("Pending", now + 60), now)
    assert abandoned(pod("Succeeded", now + 60), now) and abandoned(pod("Failed", now + 60), now)
    assert abandoned(pod("Running", now - 1), now) and abandoned(pod("Pending", now - 1), now)  # never scheduled, past its deadline
