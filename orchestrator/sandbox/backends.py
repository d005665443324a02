"""Sandbox backends by name, each imported only when chosen (docker-py is not loaded to check a policy)."""

from __future__ import annotations

import importlib

from orchestrator.errors import UsageError
from orchestrator.sandbox.base import Backend

DEFAULT_BACKEND = "docker"
# name -> "module:class"; the class is constructed with the location (None: the backend's default).
BACKENDS = {"docker": "orchestrator.sandbox.docker_backend:DockerBackend"}


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise UsageError(f"unknown sandbox backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return name


def get_backend(name: str = DEFAULT_BACKEND, location: str | None = None) -> Backend:
    """The backend `name`, placing boxes at `location`: a Docker engine's address (default: DOCKER_HOST)."""
    module, _, cls = BACKENDS[check_backend(name)].partition(":")
    backend: Backend = getattr(importlib.import_module(module), cls)(location)
    return backend
