"""Sandbox backends by name, each imported only when chosen (docker-py is not loaded to check a policy)."""

from __future__ import annotations

import importlib

from orchestrator.errors import UsageError
from orchestrator.sandbox.base import Backend

DEFAULT_BACKEND = "docker"
# name -> "module:class"; the class is constructed with the location (None: the backend's default).
BACKENDS = {
    "docker": "orchestrator.sandbox.docker_backend:DockerBackend",
    "kubernetes": "orchestrator.sandbox.kubernetes_backend:KubernetesBackend",
}
EXTRAS = {"kubernetes": "kubernetes"}  # the optional dependencies a backend needs: pip install 'airlock[EXTRA]'


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise UsageError(f"unknown sandbox backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return name


def get_backend(name: str = DEFAULT_BACKEND, location: str | None = None) -> Backend:
    """The backend `name`, placing boxes at `location`: a Docker engine's address (default: DOCKER_HOST), a
    Kubernetes namespace (default: the kubeconfig context's)."""
    module, _, cls = BACKENDS[check_backend(name)].partition(":")
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if name not in EXTRAS or (exc.name or "").split(".")[0] == "orchestrator":
            raise
        raise UsageError(f"--backend {name} needs the {exc.name} package: pip install 'airlock[{EXTRAS[name]}]'") from None
    backend: Backend = getattr(loaded, cls)(location)
    return backend
