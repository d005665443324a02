"""The cluster of the Kubernetes tests (tests/kubernetes): the fake API server of tests/kube_fake.py, whose pods
are containers on the local Docker engine, unless AIRLOCK_TEST_KUBERNETES=real (`make test-kubernetes`): then the
cluster KUBECONFIG names, and no local Docker engine is needed."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import SESSION_OWNER, airlock, airlock_env
from kube_fake import FakeCluster

from orchestrator.sandbox.kubernetes_backend import KubernetesBackend
from orchestrator.sandbox.spec import DEFAULT_IMAGE, LABEL, OWNER_LABEL

REAL = os.environ.get("AIRLOCK_TEST_KUBERNETES") == "real"
NAMESPACE = os.environ.get("AIRLOCK_TEST_NAMESPACE", "airlock-test")
IMAGE = os.environ.get("AIRLOCK_TEST_IMAGE", DEFAULT_IMAGE)  # on a real cluster: pushed to a registry it pulls from


@dataclass
class Cluster:
    kubeconfig: Path
    fake: FakeCluster | None

    def env(self, base_url: str | None = None) -> dict[str, str]:
        return airlock_env(base_url, KUBECONFIG=str(self.kubeconfig))

    def airlock(self, *args: str, base_url: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return airlock(*args, env=self.env(base_url), timeout=timeout)

    def backend(self, monkeypatch: pytest.MonkeyPatch) -> KubernetesBackend:
        monkeypatch.setenv("KUBECONFIG", str(self.kubeconfig))
        return KubernetesBackend(NAMESPACE)

    def pods(self) -> list[dict[str, Any]]:
        """This session's sandbox pods."""
        with pytest.MonkeyPatch.context() as monkeypatch:
            backend = self.backend(monkeypatch)
            selector = f"{LABEL}=1,{OWNER_LABEL}={SESSION_OWNER}"
            listed = backend.core.list_namespaced_pod(NAMESPACE, label_selector=selector, _preload_content=False)
        return list(json.loads(listed.data)["items"])
