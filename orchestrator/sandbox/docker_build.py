"""A project's own Dockerfile, built by the engine as its sandbox image.

The build's RUN steps have one way out, the setup phase's egress proxy and its allowlist: the engine runs
them on the proxy's internal network, with the proxy named in the predefined HTTP(S)_PROXY build arguments
(which the engine keeps out of the image's history). No host folder is mounted, no secret is passed, the
context is what airlock sends (the repo's files, hidden paths left out), and nothing is pulled: every FROM
names a local image. The image is tagged by a key of everything the build reads (the Dockerfile, every
file of the context, the arguments, the target, the allowlist and the ids of the images it starts from),
so a later run with the same inputs reuses it without building.
"""

from __future__ import annotations

import hashlib
import io
import json
import re

import docker
import docker.errors
import requests.exceptions

from orchestrator.errors import SandboxError
from orchestrator.sandbox.base import ImageBuild
from orchestrator.sandbox.docker_egress import start_proxy
from orchestrator.sandbox.engines import inspect_image
from orchestrator.sandbox.spec import SandboxSpec, owner_labels, owner_tag

BUILD_REPOSITORY = "airlock-build"
BUILD_LABEL = "airlock.project-image"
KEY_VERSION = b"airlock-build/v1"
_FROM = re.compile(r"^\s*FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", re.I | re.M)


def build_key(client: docker.DockerClient, build: ImageBuild) -> str:
    digest = hashlib.sha256(KEY_VERSION)
    facts = {
        "dockerfile": build.dockerfile,
        "args": build.args,
        "target": build.target,
        "allow_hosts": list(build.allow_hosts),
        "context": build.context_digest,
    }
    digest.update(json.dumps(facts, sort_keys=True).encode() + b"\0" + build.dockerfile_text + b"\0")
    for name in base_images(build.dockerfile_text.decode("utf-8", "replace")):
        try:
            digest.update(f"{name}={client.api.inspect_image(name)['Id']}\0".encode())
        except docker.errors.ImageNotFound:
            digest.update(f"{name}=missing\0".encode())  # the build fails on it (nothing is pulled)
    return digest.hexdigest()


def base_images(dockerfile: str) -> list[str]:
    """The images the Dockerfile's FROM lines name (not its own stages, not names made of build arguments)."""
    names, stages = [], set()
    for match in _FROM.finditer(dockerfile):
        name, stage = match.group(1), match.group(2)
        if "$" not in name and name.lower() not in stages:
            names.append(name)
        if stage:
            stages.add(stage.lower())
    return names


def build_project_image(client: docker.DockerClient, spec: SandboxSpec, build: ImageBuild) -> tuple[str, bool]:
    """The image's tag, and whether it was built now; the caller removes the run's proxy afterwards."""
    tag = f"{BUILD_REPOSITORY}:{build_key(client, build)[:24]}"
    if inspect_image(client, tag) is not None:
        return tag, False
    try:
        proxy = start_proxy(client, f"airlock-build-{spec.run_id}", build.allow_hosts, owner_labels(spec))
        through = {name: proxy.url for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
        through |= {"NO_PROXY": "localhost,127.0.0.1", "no_proxy": "localhost,127.0.0.1"}
        last = ""
        for chunk in client.api.build(
            fileobj=io.BytesIO(build.context), custom_context=True, dockerfile=build.dockerfile, tag=tag, target=build.target,
            buildargs={**build.args, **through}, network_mode=proxy.network.name, labels={BUILD_LABEL: "1", **owner_tag()},
            container_limits={"memory": build.memory, "memswap": build.memory}, rm=True, forcerm=True, pull=False, decode=True,
            timeout=build.timeout,
        ):  # fmt: skip
            for line in str(chunk.get("stream") or "").splitlines():
                if line.strip():
                    build.log(line)
                    last = line.strip()
            if "error" in chunk:
                error = str(chunk["error"]).strip()
                build.log(error)
                raise SandboxError(f"the project's Dockerfile {build.dockerfile} did not build: {error.splitlines()[-1][:300] if error else last}")
    except requests.exceptions.ReadTimeout:
        raise SandboxError(f"the project's Dockerfile {build.dockerfile} did not build within {build.timeout:g} s") from None
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise SandboxError(f"the project's Dockerfile {build.dockerfile} did not build: {getattr(exc, 'explanation', None) or exc}") from None
    return tag, True
