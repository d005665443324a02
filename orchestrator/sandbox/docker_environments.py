"""Environment images on Docker: `airlock-env:<key>`, the base image plus one layer holding ENV_ROOT.

The layer is built by the classic builder from a context the host wrote itself (checked members only,
see orchestrator.run.environment): no container of the setup phase is committed, so nothing else it held
(its home, /tmp, its process environment and so any secret) can reach the image. Files are root-owned,
and every sandbox mounts the image's root read-only: the agent cannot change the environment.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import docker
import docker.errors
import requests.exceptions

from orchestrator.errors import SandboxError
from orchestrator.sandbox.base import Environment
from orchestrator.sandbox.docker_client import parse_time
from orchestrator.sandbox.spec import ENV_ROOT

ENV_REPOSITORY = "airlock-env"
ENV_LABEL = "airlock.env"
KEY_LABEL = "airlock.env.key"
TAG_CHARS = 24
DOCKERFILE = f"ARG BASE\nFROM ${{BASE}}\nCOPY {ENV_ROOT.rsplit('/', 1)[1]} {ENV_ROOT}\n"


def reference(key: str) -> str:
    return f"{ENV_REPOSITORY}:{key[:TAG_CHARS]}"


def _environment(attrs: dict) -> Environment | None:
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    if labels.get(ENV_LABEL) != "1" or not labels.get(KEY_LABEL):
        return None
    when = parse_time(attrs.get("Created")) or 0.0
    size = int(labels.get("airlock.env.bytes", "0") or 0)
    return Environment(key=labels[KEY_LABEL], image=reference(labels[KEY_LABEL]), size=size, created=when, labels=labels)


class DockerEnvironments:
    def __init__(self, client: docker.DockerClient, labels: dict[str, str] | None = None) -> None:
        self.client = client
        self.labels = labels or {}  # put on every image saved (the owner's label, when set)

    def image_id(self, image: str) -> str:
        try:
            return str(self.client.api.inspect_image(image)["Id"])
        except docker.errors.ImageNotFound:
            raise SandboxError(f"sandbox image {image!r} not found; build it with `airlock image build`") from None

    def find(self, key: str) -> Environment | None:
        try:
            env = _environment(self.client.api.inspect_image(reference(key)))
        except docker.errors.ImageNotFound:
            return None
        return env if env is not None and env.key == key else None

    def save(self, key: str, base_image: str, archive: Path, labels: dict[str, str]) -> Environment:
        """`archive`: an uncompressed tar whose members are under `airlock-env/`; a Dockerfile is appended to it."""
        with tarfile.open(archive, mode="a") as tar:
            info = tarfile.TarInfo("Dockerfile")
            info.size = len(DOCKERFILE)
            tar.addfile(info, fileobj=io.BytesIO(DOCKERFILE.encode()))
        tag = reference(key)
        try:
            with open(archive, "rb") as context:
                for chunk in self.client.api.build(
                    fileobj=context, custom_context=True, tag=tag, buildargs={"BASE": base_image}, rm=True, forcerm=True, pull=False,
                    labels={**self.labels, **labels, ENV_LABEL: "1", KEY_LABEL: key}, decode=True, timeout=None,
                ):  # fmt: skip
                    if "error" in chunk:
                        raise SandboxError(f"saving the environment image failed: {str(chunk['error']).strip()[:300]}")
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise SandboxError(f"saving the environment image failed: {exc}") from None
        env = self.find(key)
        if env is None:
            raise SandboxError(f"saving the environment image finished but {tag} is not there")
        return env

    def all(self) -> list[Environment]:
        found = (_environment(image.attrs) for image in self.client.images.list(filters={"label": ENV_LABEL}))
        return sorted((env for env in found if env is not None), key=lambda env: env.created)

    def remove(self, env: Environment) -> None:
        try:
            self.client.api.remove_image(env.image)
        except docker.errors.ImageNotFound:
            return
        except docker.errors.APIError as exc:
            raise SandboxError(f"cannot remove {env.image}: {exc.explanation or exc}") from None
