"""Any image as a sandbox: the tool runtime (sandbox_image/runtime.sh) added to it.

An image that does not carry the runtime (node:22, golang:1.23, a SWE-bench instance image) gets a derived
image: the image itself plus a read-only copy of the sandbox image's /opt/airlock-runtime, one COPY layer
made by the engine's own builder, with no network, no context and nothing run in the image. It is tagged
by the ids of both images, so it is built once per pair, and removed when the sandbox image changes.

The runtime starts with its own loader and libraries, so the image's libc does not matter to it; musl
images are refused all the same (their userland is not what the agent's commands are tested against).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import docker
import docker.errors
import requests.exceptions

from orchestrator.errors import SandboxError
from orchestrator.sandbox.base import Log
from orchestrator.sandbox.docker_client import dockerfile_context
from orchestrator.sandbox.engines import inspect_image
from orchestrator.sandbox.spec import DEFAULT_IMAGE, IMAGE_PATH, RUNTIME, RUNTIME_LABEL, SandboxSpec, owner_labels, owner_tag

DERIVED_REPOSITORY = "airlock-image"
DERIVED_LABEL = "airlock.derived"  # on every derived image
FROM_LABEL = "airlock.derived.from"  # the id of the image it adds the runtime to
RUNTIME_FROM_LABEL = "airlock.derived.runtime"  # the id of the sandbox image the runtime was copied from
MUSL_LOADERS = ("/lib/ld-musl-x86_64.so.1", "/lib/ld-musl-aarch64.so.1")
DERIVED_DOCKERFILE = f"""\
ARG RUNTIME_IMAGE
ARG IMAGE
FROM ${{RUNTIME_IMAGE}} AS runtime
FROM ${{IMAGE}}
COPY --from=runtime {RUNTIME} {RUNTIME}
"""


def refusal(client: docker.DockerClient, image: dict[str, Any], spec: SandboxSpec) -> str | None:
    """Why the image (its inspect data) cannot be a sandbox, in one line; None when it can."""
    if carries_runtime(image):
        return None
    try:
        ours = client.api.inspect_image(DEFAULT_IMAGE)
    except docker.errors.ImageNotFound:
        return f"--image {spec.image} gets its tool runtime from {DEFAULT_IMAGE}, which is missing: run `airlock image build`"
    if image.get("Architecture") != ours.get("Architecture") or image.get("Os") != ours.get("Os"):
        return f"image {spec.image!r} is for {image.get('Os')}/{image.get('Architecture')}, not {ours.get('Os')}/{ours.get('Architecture')} as this engine's sandbox image"
    if any(_has_file(client, image["Id"], path, spec) for path in MUSL_LOADERS):
        return f"image {spec.image!r} has a musl userland (Alpine-like): airlock runs images with a glibc userland (Debian, Ubuntu, RHEL-like)"
    return None


def carries_runtime(image: dict[str, Any]) -> bool:
    return ((image.get("Config") or {}).get("Labels") or {}).get(RUNTIME_LABEL) == RUNTIME


def with_tool_runtime(client: docker.DockerClient, spec: SandboxSpec, log: Log) -> tuple[SandboxSpec, dict[str, Any]]:
    """`spec` on an image that carries the tool runtime (the derived one, built when missing), with the image's
    own PATH and volumes; and what run.json records of it."""
    try:
        image = client.api.inspect_image(spec.image)
        recorded: dict[str, Any] = {}
        if not carries_runtime(image):
            runtime_id = client.api.inspect_image(DEFAULT_IMAGE)["Id"]
            tag = _derived(client, spec.image, image["Id"], runtime_id, log)
            recorded = {"runtime_image": tag, "runtime_from": runtime_id}
            image = client.api.inspect_image(tag)
    except docker.errors.ImageNotFound as exc:
        raise SandboxError(f"image not found while adding the tool runtime: {exc.explanation or exc}") from None
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise SandboxError(f"could not add the tool runtime to {spec.image}: {exc}") from None
    config = image.get("Config") or {}
    path = next((var[5:] for var in config.get("Env") or [] if var.startswith("PATH=")), IMAGE_PATH)
    volumes = tuple(sorted(config.get("Volumes") or {}))
    return replace(spec, image=recorded.get("runtime_image", spec.image), path=path, image_volumes=volumes), recorded


def _derived(client: docker.DockerClient, name: str, image_id: str, runtime_id: str, log: Log) -> str:
    digest = hashlib.sha256(f"{DERIVED_DOCKERFILE}\0{image_id}\0{runtime_id}".encode()).hexdigest()
    tag = f"{DERIVED_REPOSITORY}:{digest[:16]}"
    if inspect_image(client, tag) is not None:
        return tag
    log(f"adding airlock's tool runtime to {name} as {tag} (once per image)")
    context = dockerfile_context(DERIVED_DOCKERFILE)
    labels = {DERIVED_LABEL: "1", FROM_LABEL: image_id, RUNTIME_FROM_LABEL: runtime_id, RUNTIME_LABEL: RUNTIME, **owner_tag()}
    for chunk in client.api.build(
        fileobj=context, custom_context=True, tag=tag, buildargs={"IMAGE": image_id, "RUNTIME_IMAGE": runtime_id},
        labels=labels, network_mode="none", rm=True, forcerm=True, pull=False, decode=True, timeout=None,
    ):  # fmt: skip
        if "error" in chunk:
            raise SandboxError(f"adding the tool runtime to {name} failed: {str(chunk['error']).strip()[:300]}")
    return tag


def _has_file(client: docker.DockerClient, image_id: str, path: str, spec: SandboxSpec) -> bool:
    """Whether the image holds `path`, read from a container that is created, never started."""
    container = client.api.create_container(image_id, command=["/airlock-probe"], entrypoint=[], labels=owner_labels(spec), network_disabled=True)
    try:
        try:
            stream, _ = client.api.get_archive(container["Id"], path)
            for _chunk in stream:
                pass
            return True
        except docker.errors.NotFound:
            return False
    finally:
        client.api.remove_container(container["Id"], v=True, force=True)  # v: an image's VOLUME made one


def remove_outdated_derived_images(client: docker.DockerClient) -> None:
    """Derived images of earlier sandbox images (one a container still uses stays)."""
    try:
        current = client.api.inspect_image(DEFAULT_IMAGE)["Id"]
    except docker.errors.ImageNotFound:
        return
    for image in client.images.list(filters={"label": DERIVED_LABEL}):
        if image.labels.get(RUNTIME_FROM_LABEL) != current:
            try:
                client.api.remove_image(image.id)
            except docker.errors.APIError:
                pass
