"""Sandbox backends by name, each imported only when chosen (docker-py is not loaded to check a policy)."""

from __future__ import annotations

import importlib

from orchestrator.errors import UsageError
from orchestrator.sandbox.base import Backend

DEFAULT_BACKEND = "docker"
# name -> "module:class"; the class is constructed with no arguments.
BACKENDS = {"docker": "orchestrator.sandbox.docker_backend:DockerBackend"}


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise UsageError(f"unknown sandbox backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return name


def get_backend(name: str = DEFAULT_BACKEND) -> Backend:
    module, _, cls = BACKENDS[check_backend(name)].partition(":")
    backend: Backend = getattr(importlib.import_module(module), cls)()
    return backend
