"""The egress proxy on Docker: a squid sidecar and the private network it shares with one setup sandbox.

The network is internal (no route out) and the engine assigns the host no address on it
(`inhibit_ipv4`), so from the setup sandbox neither the host's services nor anything else answers: only
the proxy, which alone also sits on Docker's default bridge to reach the allowlisted hosts. The proxy is
tied to its owner like a sandbox (it stops when the owner's stdin lifeline closes) and carries the run's
labels, so the run's clean-up, `airlock gc` and other airlock processes remove it with the sandbox.

The proxy image is Debian's squid on the sandbox image, built once per sandbox image (apt reaches Debian's
archive; no container registry is needed) and tagged by a digest of both.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.models.networks import Network

from orchestrator.errors import SandboxError
from orchestrator.sandbox.docker_client import dockerfile_context, parse_time
from orchestrator.sandbox.egress import CREDENTIALS_FILE, PROXY_PORT, Credential, credentials_config, squid_config
from orchestrator.sandbox.engines import inspect_image
from orchestrator.sandbox.hijack import pipe_of
from orchestrator.sandbox.spec import DEFAULT_IMAGE

PROXY_REPOSITORY = "airlock-proxy"
PROXY_IMAGE_LABEL = "airlock.proxy-image"
ROLE_LABEL = "airlock.role"
NETWORK_LABEL = "airlock.network"
EGRESS_NETWORK = "bridge"  # Docker's default bridge: the proxy's way out
READY_TIMEOUT_S = 60.0
PROXY_DOCKERFILE = f"""\
ARG BASE
FROM ${{BASE}}
USER root
RUN apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends squid \\
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
LABEL {PROXY_IMAGE_LABEL}="1" org.opencontainers.image.title="airlock-proxy"
USER proxy
"""
# The config arrives in an environment variable (no mounts), the credentials it includes as the first line of
# stdin (base64), so no secret is in the container's configuration; the proxy lives as long as its stdin is open.
PROXY_COMMAND = (
    f'IFS= read -r credentials; printf "%s" "$credentials" | base64 -d > {CREDENTIALS_FILE} || exit 1; '
    'printf "%s\\n" "$SQUID_CONF" > /tmp/squid.conf || exit 1; squid -N -f /tmp/squid.conf & cat > /dev/null'
)


def _current_tag(client: docker.DockerClient) -> tuple[str, str]:
    """The proxy image's tag for the current sandbox image, and that image's id."""
    try:
        base_id = client.api.inspect_image(DEFAULT_IMAGE)["Id"]
    except docker.errors.ImageNotFound:
        raise SandboxError(f"the egress proxy is built on {DEFAULT_IMAGE}, which is missing: run `airlock image build`") from None
    digest = hashlib.sha256(PROXY_DOCKERFILE.encode() + b"\0" + base_id.encode()).hexdigest()
    return f"{PROXY_REPOSITORY}:{digest[:16]}", base_id


def remove_outdated_proxy_images(client: docker.DockerClient) -> None:
    """Proxy images of earlier sandbox images (one in use by a running proxy stays)."""
    try:
        current, _ = _current_tag(client)
    except SandboxError:
        return
    for image in client.images.list(filters={"label": PROXY_IMAGE_LABEL}):
        if current not in image.tags:
            try:
                client.api.remove_image(image.id)
            except docker.errors.APIError:
                pass


def proxy_image(client: docker.DockerClient, log: Any = lambda _line: None) -> str:
    """The proxy image for the current sandbox image, built when missing (about half a minute, once)."""
    tag, base_id = _current_tag(client)
    if inspect_image(client, tag) is not None:
        return tag
    log(f"building the egress proxy image {tag} (Debian's squid, once per sandbox image)")
    context = dockerfile_context(PROXY_DOCKERFILE)
    try:
        for chunk in client.api.build(
            fileobj=context, custom_context=True, tag=tag, buildargs={"BASE": base_id}, rm=True, forcerm=True, pull=False, decode=True, timeout=None
        ):
            if "error" in chunk:
                raise SandboxError(f"building the egress proxy image failed: {str(chunk['error']).strip()[:300]}")
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise SandboxError(f"building the egress proxy image failed: {exc}") from None
    return tag


@dataclass
class Proxy:
    container: Container
    network: Network
    address: str  # the proxy's IP address on the setup network
    lifeline: Any

    @property
    def url(self) -> str:
        return f"http://{self.address}:{PROXY_PORT}"


def start_proxy(
    client: docker.DockerClient, name: str, allow_hosts: tuple[str, ...], labels: dict[str, str], credentials: tuple[Credential, ...] = ()
) -> Proxy:
    """A private internal network and a squid on it, ready to forward to `allow_hosts` and to add `credentials`."""
    network = client.networks.create(
        name, driver="bridge", internal=True, check_duplicate=True, enable_ipv6=False, labels=labels | {NETWORK_LABEL: "1"},
        options={"com.docker.network.bridge.inhibit_ipv4": "true"},  # no host address on it: the host is unreachable
    )  # fmt: skip
    network.reload()
    subnet = network.attrs["IPAM"]["Config"][0]["Subnet"]
    container = client.containers.create(
        image=proxy_image(client), command=["sh", "-c", PROXY_COMMAND], stdin_open=True, user="proxy",
        environment={"SQUID_CONF": squid_config(allow_hosts, subnet)}, labels=labels | {ROLE_LABEL: "proxy"},
        name=f"{name}-proxy", network_mode=EGRESS_NETWORK, read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges:true"],
        tmpfs={"/tmp": "rw,nosuid,nodev,noexec,size=64m"}, init=True, mem_limit=256 * 1024**2, memswap_limit=256 * 1024**2,
        pids_limit=128, nano_cpus=int(1e9), use_config_proxy=False, hostname="egress-proxy",
    )  # fmt: skip
    network.connect(container)
    lifeline = client.api.attach_socket(container.id, params={"stdin": 1, "stream": 1})
    container.start()
    pipe_of(lifeline).send(base64.b64encode(credentials_config(credentials).encode()) + b"\n")
    _wait_ready(client, container)
    container.reload()
    address = container.attrs["NetworkSettings"]["Networks"][name]["IPAddress"]
    return Proxy(container, network, address, lifeline)


def _wait_ready(client: docker.DockerClient, container: Container) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        chatter = client.api.logs(container.id, stdout=False, stderr=True).decode("utf-8", "replace")
        if "Accepting HTTP Socket connections" in chatter:
            return
        if "FATAL" in chatter or client.api.inspect_container(container.id)["State"]["Status"] != "running":
            raise SandboxError(f"the egress proxy did not start: {(chatter.strip().splitlines() or ['no output'])[-1][:300]}")
        time.sleep(0.1)
    raise SandboxError(f"the egress proxy did not start within {READY_TIMEOUT_S:.0f} s")


def proxy_log(client: docker.DockerClient, proxy: Proxy) -> str:
    try:
        return client.api.logs(proxy.container.id, stdout=True, stderr=False).decode("utf-8", "replace")
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return ""


def _age(created: Any) -> float:
    when = parse_time(created)
    return float("inf") if when is None else time.time() - when


def remove_networks(client: docker.DockerClient, labels: list[str], unused_only: bool = False, grace_s: float = 0.0) -> list[str]:
    """Remove airlock's setup networks that carry `labels`; with `unused_only`, only those no container uses
    and older than `grace_s` (one just made is about to get its proxy)."""
    removed = []
    for network in client.networks.list(filters={"label": [NETWORK_LABEL, *labels]}):
        try:
            network.reload()
            if unused_only and (network.attrs.get("Containers") or _age(network.attrs.get("Created")) < grace_s):
                continue
            network.remove()
            removed.append(network.name or "")
        except docker.errors.NotFound:
            continue
        except docker.errors.APIError as exc:
            if exc.status_code != 409 and "active endpoints" not in str(exc):  # in use right now: its owner removes it
                raise
    return removed
