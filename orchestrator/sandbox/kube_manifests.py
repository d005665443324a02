"""The Kubernetes objects of a sandbox, as plain manifests: the Pod, the deny-all NetworkPolicy, the tool code.

Every Docker hardening has its Kubernetes form here (the README's table maps one to the other):
no network (a NetworkPolicy denying all ingress and egress of sandbox pods, checked from inside by the
egress probe), no capabilities, no privilege escalation, a read-only root, a non-root uid, the runtime's
default seccomp profile, requests equal to limits for CPU and memory, every writable place an emptyDir in
memory with a size limit, no service account token, no service links, no host namespaces or paths, a
deadline (activeDeadlineSeconds) after which the pod is stopped whatever its owner does, and labels for gc.
The tool code is a ConfigMap mounted read-only: Kubernetes cannot exec as root to write it, as Docker does.
No client library is needed to build them (the tests validate them against the Kubernetes schema).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from orchestrator.sandbox.spec import DEADLINE_LABEL, LABEL, OWNER_LABEL, SANDBOX_ENV, Layout, SandboxSpec, owner_labels

CONTAINER = "sandbox"
NETWORK_POLICY = "airlock-sandbox-deny-all"
TOOLS_LABEL = "airlock.tools"
SELECTOR = {LABEL: "1"}
LAYOUT = Layout()
# Sizes of the writable places besides the workspace and the baseline, as on Docker.
TMP_BYTES, HOME_BYTES = 512 * 1024**2, 256 * 1024**2
_LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.-]+")


def pod_name(run_id: str) -> str:
    return f"airlock-{re.sub(r'[^a-z0-9-]+', '-', run_id.lower())}"[:63].rstrip("-")


def label_value(value: str) -> str:
    """`value` as a valid label value (at most 63 of letters, digits, '-', '_', '.', alphanumeric at both ends)."""
    return _LABEL_VALUE.sub("-", value)[:63].strip("-_.")


def uid_gid(user: str) -> tuple[int, int]:
    uid, gid = user.split(":")
    return int(uid), int(gid)


def tools_config_map(namespace: str, files: dict[str, str]) -> dict[str, Any]:
    """The tool code, named by its content (one per version, shared by every pod), and immutable."""
    digest = hashlib.sha256("".join(f"{name}\0{text}\0" for name, text in sorted(files.items())).encode()).hexdigest()[:16]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"airlock-tools-{digest}", "namespace": namespace, "labels": {TOOLS_LABEL: "1"}},
        "immutable": True,
        "data": dict(sorted(files.items())),
    }


def deny_all_policy(namespace: str) -> dict[str, Any]:
    """No traffic in or out of any sandbox pod: policy types listed, no rule allowing anything."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": NETWORK_POLICY, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "airlock"}},
        "spec": {"podSelector": {"matchLabels": dict(SELECTOR)}, "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": []},
    }


def _memory_volume(name: str, size: int) -> dict[str, Any]:
    return {"name": name, "emptyDir": {"medium": "Memory", "sizeLimit": str(size)}}


def sandbox_pod(spec: SandboxSpec, namespace: str, tools: str) -> dict[str, Any]:
    """The Pod of one sandbox; `tools` is the ConfigMap holding the tool code."""
    labels = owner_labels(spec)
    annotations = {key: labels.pop(key) for key in ("airlock.host", "airlock.pid", DEADLINE_LABEL)}
    if OWNER_LABEL in labels:
        annotations[OWNER_LABEL] = labels[OWNER_LABEL]  # exactly as given; the label is made valid
        labels[OWNER_LABEL] = label_value(labels[OWNER_LABEL])
    labels["airlock.run-id"] = label_value(labels["airlock.run-id"])
    uid, gid = uid_gid(spec.user)
    identity = {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": gid, "seccompProfile": {"type": "RuntimeDefault"}}
    resources = {"cpu": f"{max(int(spec.cpus * 1000), 10)}m", "memory": str(spec.memory)}
    mounts = [
        (LAYOUT.workspace, "workspace", spec.disk),
        (LAYOUT.state, "state", spec.disk),
        ("/tmp", "tmp", TMP_BYTES),
        ("/home/airlock", "home", HOME_BYTES),
    ]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # Stopped by the cluster past the run's lifetime, even if its owner (and the lifeline) never let go.
        "activeDeadlineSeconds": int(spec.lifetime_s),
        "terminationGracePeriodSeconds": 1,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "shareProcessNamespace": False,
        "hostname": "sandbox",
        "securityContext": identity,
        "containers": [
            {
                "name": CONTAINER,
                "image": spec.image,
                "imagePullPolicy": "IfNotPresent",
                # Lives as long as its stdin is open, which only the owner's attach holds (stdinOnce); tini reaps zombies.
                "command": ["tini", "-s", "--", "cat"],
                "stdin": True,
                "stdinOnce": True,
                "tty": False,
                "workingDir": LAYOUT.workspace,
                "env": [{"name": name, "value": value} for name, value in SANDBOX_ENV.items()],
                "securityContext": {
                    **identity,
                    "allowPrivilegeEscalation": False,
                    "privileged": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                    "procMount": "Default",
                },
                "resources": {"requests": dict(resources), "limits": dict(resources)},  # equal: the Guaranteed class, no overcommit
                "volumeMounts": [
                    *({"name": name, "mountPath": path} for path, name, _ in mounts),
                    {"name": "tools", "mountPath": LAYOUT.tools_dir, "readOnly": True},
                ],
            }
        ],
        "volumes": [
            *(_memory_volume(name, size) for _, name, size in mounts),
            {"name": "tools", "configMap": {"name": tools, "defaultMode": 0o444}},
        ],
    }
    if spec.runtime_class:
        pod_spec["runtimeClassName"] = spec.runtime_class
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod_name(spec.run_id), "namespace": namespace, "labels": labels, "annotations": annotations},
        "spec": pod_spec,
    }
