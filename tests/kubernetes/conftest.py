"""Fixtures of the Kubernetes tests: the cluster (tests/kube_cluster.py), and the check that no test leaves a
sandbox pod behind (on the fake, the pods' containers also carry the session's owner label)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_cluster import NAMESPACE, REAL, Cluster
from kube_fake import V4, V5, FakeCluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if REAL:
        yield Cluster(Path(os.environ["KUBECONFIG"]), None)
        return
    import docker

    client = docker.from_env()
    with FakeCluster(client) as fake:
        yield Cluster(fake.kubeconfig(tmp_path_factory.mktemp("kube") / "config", NAMESPACE), fake)
    client.close()


@pytest.fixture(autouse=True)
def no_pod_left_behind(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if cluster.fake is not None:  # a test's knobs do not outlive it
        cluster.fake.enforce, cluster.fake.protocols = True, (V5, V4)
    left = [pod["metadata"]["name"] for pod in cluster.pods()]
    if cluster.fake is not None:
        for name in left:
            with contextlib.suppress(Exception):
                cluster.fake.delete_pod(NAMESPACE, name)
    assert not left, f"{request.node.name} left sandbox pods behind: {left}"
