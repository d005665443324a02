"""The sandbox image on the engine where the sandbox runs: present there, and never silently another one.

An engine that lacks the image, or holds a different image under its tag, gets this machine's: streamed
from this machine's engine (`docker save` into `docker load`, with progress) and checked by id after the
load. An engine that has the image while this machine has none uses its own; every run records the id it
ran (run.json `sandbox.image_id`). To build it on the engine itself instead, through the same offline path
(the base is made here with mmdebstrap and imported there; no registry on either side):
`DOCKER_HOST=ssh://host airlock image build`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import docker
import docker.errors
import requests.exceptions

from orchestrator.errors import SandboxError
from orchestrator.sandbox.docker_client import LOCAL_ENGINE, docker_client

Log = Callable[[str], None]
CHUNK_BYTES = 1024 * 1024
PROGRESS_STEPS = 4  # a line at every quarter of the image


def inspect_image(client: docker.DockerClient, tag: str) -> dict[str, Any] | None:
    try:
        return client.api.inspect_image(tag)
    except docker.errors.ImageNotFound:
        return None


def local_engine_client(address: str) -> docker.DockerClient | None:
    """This machine's engine, as the source of images for the engine at `address`; None if that is it, or none answers."""
    if address == LOCAL_ENGINE:
        return None
    try:
        return docker_client(LOCAL_ENGINE)
    except SandboxError:
        return None


def ensure_image(client: docker.DockerClient, tag: str, *, where: str, source: docker.DockerClient | None, log: Log) -> str:
    """The id of `tag` on the engine of `client` (at `where`), after sending it `source`'s when that one differs
    or is missing there. Raises SandboxError when neither has it, or the load does not give the same id."""
    try:
        there = inspect_image(client, tag)
        here = inspect_image(source, tag) if source is not None else None
        if here is None:
            if there is None:
                raise SandboxError(f"sandbox image {tag!r} not found on {where}; build it there with `DOCKER_HOST={where} airlock image build`")
            return str(there["Id"])
        if there is not None and there["Id"] == here["Id"]:
            return str(there["Id"])
        assert source is not None
        differs = f" (it holds {tag} as another image, {_short(there['Id'])}, which this replaces)" if there is not None else ""
        _send(source, client, tag, int(here.get("Size") or 0), where, log, differs)
        loaded = inspect_image(client, tag)
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise SandboxError(f"could not make {tag} present on {where}: {getattr(exc, 'explanation', None) or exc}") from None
    if loaded is None or loaded["Id"] != here["Id"]:
        got = _short(loaded["Id"]) if loaded is not None else "nothing"
        raise SandboxError(f"after loading {tag} into {where} it is {got}, not this machine's {_short(here['Id'])}: refusing to run another image")
    return str(loaded["Id"])


def _send(source: docker.DockerClient, target: docker.DockerClient, tag: str, size: int, where: str, log: Log, note: str) -> None:
    started = time.monotonic()
    log(f"sending {tag} ({size / 1e6:.0f} MB) from this machine's engine to {where}{note}")

    def counted(chunks: Iterator[bytes]) -> Iterator[bytes]:
        sent, step = 0, 1
        for chunk in chunks:
            sent += len(chunk)
            if size and step < PROGRESS_STEPS and sent >= size * step / PROGRESS_STEPS:
                log(f"  {tag} → {where}: {sent / 1e6:.0f} of {size / 1e6:.0f} MB")
                step = min(int(sent * PROGRESS_STEPS / size) + 1, PROGRESS_STEPS)
            yield chunk

    for event in target.api.load_image(counted(source.api.get_image(tag, chunk_size=CHUNK_BYTES))):
        if isinstance(event, dict) and event.get("error"):
            raise SandboxError(f"loading {tag} into {where} failed: {str(event['error']).strip()[:300]}")
    log(f"  {tag} is on {where} ({time.monotonic() - started:.1f} s)")


def _short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]
