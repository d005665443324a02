"""Building the sandbox image (`airlock image build`) and telling whether it is there and current.

Two ways to get a Debian base, one Dockerfile (sandbox_image/Dockerfile) on top of either:
- registry: FROM debian:bookworm-slim, whose missing packages the Dockerfile installs with apt;
- debian-packages: mmdebstrap makes a bookworm rootfs that already holds the packages, from
  Debian's package mirrors alone, and `docker import` turns it into airlock-base:bookworm.
  This is the path for machines that reach Debian's packages but no container registry.
"""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions

import sandbox_image
from orchestrator.errors import SandboxError, UsageError
from orchestrator.sandbox.docker_client import docker_client
from orchestrator.sandbox.spec import DEFAULT_IMAGE, owner_tag

BASE_ROOTFS_IMAGE = "airlock-base:bookworm"
REGISTRY_BASE = "debian:bookworm-slim"
SUITE = "bookworm"
# What the agent's tools need (Python and Node.js projects alike: `python`, venvs and the pip they use, npm, make), the CA
# certificates a setup phase needs to install dependencies over TLS, tini: a PID 1 that reaps zombies, and
# patchelf, which makes the tool runtime's programs start with their own loader (sandbox_image/runtime.sh).
PACKAGES: tuple[str, ...] = (
    "python3", "python-is-python3", "python3-pytest", "python3-venv", "python3-pip", "git", "ripgrep", "make", "nodejs", "npm",
    "ca-certificates", "tini", "patchelf",
)  # fmt: skip
# Commands the image must offer, checked by `airlock doctor` in a throwaway container.
COMMANDS = ("python3", "python", "git", "rg", "make", "node", "npm")

LABEL_DIGEST = "airlock.build-digest"
LABEL_BASE_MODE = "airlock.base-mode"
# On airlock-base:bookworm (and so inherited by images built on it): what mmdebstrap put in.
LABEL_BASE_PACKAGES = "airlock.base-packages"

# A registry that can be reached answers within seconds; one that cannot must not stall a build.
REGISTRY_FIRST_ANSWER_S = 20.0
REGISTRY_IDLE_S = 300.0
# `docker import` sets no PATH; give the base the one debian:bookworm-slim has, so both agree.
_DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Log = Callable[[str], None]


class BaseMode(str, Enum):
    """Where the Debian base comes from (`--base`)."""

    AUTO = "auto"
    REGISTRY = "registry"
    DEBIAN_PACKAGES = "debian-packages"


@dataclass(frozen=True)
class BuildResult:
    tag: str
    image_id: str
    digest: str
    base_mode: BaseMode  # the concrete mode used, never AUTO
    built: bool  # False when the image was already up to date
    seconds: float


@dataclass(frozen=True)
class ImageInfo:
    tag: str
    present: bool
    up_to_date: bool = False
    image_id: str | None = None
    base_mode: str | None = None
    # Tool name -> found inside a container of the image; empty when not probed.
    tools: dict[str, bool] = field(default_factory=dict)
    probe_error: str | None = None


def context_dir() -> Path:
    """The build context: the installed sandbox_image package folder."""
    return Path(sandbox_image.__file__).resolve().parent


def build_digest(base_mode: BaseMode, packages: Iterable[str] = PACKAGES) -> str:
    """sha256 over everything that decides the image's content: Dockerfile, packages, base mode."""
    if base_mode is BaseMode.AUTO:
        raise ValueError("the digest is defined for a concrete base mode")
    h = hashlib.sha256(b"airlock-sandbox-image/v1\0")
    for name in ("Dockerfile", "runtime.sh"):
        h.update((context_dir() / name).read_bytes() + b"\0")
    h.update(b"\0" + " ".join(packages).encode() + b"\0" + base_mode.value.encode())
    return h.hexdigest()


def mmdebstrap_unusable_reason() -> str | None:
    """Why the offline debian-packages path cannot run here, or None when it can."""
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap is not installed (apt-get install mmdebstrap; `make setup` does it)"
    if os.geteuid() != 0:
        return "mmdebstrap needs root to build the base rootfs"
    return None


def build_image(
    tag: str = DEFAULT_IMAGE,
    base: BaseMode | str = BaseMode.AUTO,
    rebuild: bool = False,
    log: Log = lambda _line: None,
    client: docker.DockerClient | None = None,
) -> BuildResult:
    """Build the sandbox image as `tag`; a fast no-op when an up-to-date one exists, unless `rebuild`.

    `rebuild` also refreshes the base (a new mmdebstrap rootfs, or a fresh pull), so package
    updates get in. Raises SandboxError with one line on any failure.
    """
    started = time.monotonic()
    try:
        base = BaseMode(base)
    except ValueError:
        choices = ", ".join(m.value for m in BaseMode)
        raise UsageError(f"--base must be one of {choices}, not {base!r}") from None
    client = client or docker_client()
    try:
        existing = _inspect(client, tag)
        if existing is not None and not rebuild:
            mode = _current_mode(existing)
            if mode is not None and base in (BaseMode.AUTO, mode):
                digest = _labels(existing)[LABEL_DIGEST]
                log(f"{tag} is up to date (digest {digest[:12]}, base {mode.value})")
                return BuildResult(tag, existing["Id"], digest, mode, False, time.monotonic() - started)

        mode = _resolve_mode(client, base, log)
        leftovers: list[str] = []
        if mode is BaseMode.DEBIAN_PACKAGES:
            leftovers += _ensure_base_rootfs(client, log, refresh=rebuild)
            base_ref = BASE_ROOTFS_IMAGE
        else:
            _ensure_registry_base(client, log, refresh=rebuild, auto=base is BaseMode.AUTO)
            base_ref = REGISTRY_BASE

        digest = build_digest(mode)
        image_id = _docker_build(client, tag, base_ref, mode, digest, nocache=rebuild, log=log)
        if existing is not None and existing["Id"] != image_id:
            leftovers.insert(0, existing["Id"])  # the old sandbox image first: it pins the old base
        for old in leftovers:
            _remove_quietly(client, old)
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise SandboxError(f"building {tag} failed: {_one_line(exc)}") from exc
    seconds = time.monotonic() - started
    log(f"built {tag} ({image_id[7:19]}) from {base_ref} in {seconds:.1f} s")
    return BuildResult(tag, image_id, digest, mode, True, seconds)


def image_info(client: docker.DockerClient, tag: str = DEFAULT_IMAGE, probe: bool = True) -> ImageInfo:
    """Is `tag` there, built from the current Dockerfile and packages, and does it hold the tools?

    With `probe`, a throwaway container (no network, removed afterwards) looks for the tools.
    """
    attrs = _inspect(client, tag)
    if attrs is None:
        return ImageInfo(tag, present=False)
    mode = _current_mode(attrs)
    tools: dict[str, bool] = {}
    probe_error = None
    if probe:
        try:
            tools = _probe_tools(client, attrs["Id"])
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            probe_error = _one_line(exc)
    return ImageInfo(
        tag,
        present=True,
        up_to_date=mode is not None,
        image_id=attrs["Id"],
        base_mode=_labels(attrs).get(LABEL_BASE_MODE),
        tools=tools,
        probe_error=probe_error,
    )


# --- up-to-date logic -------------------------------------------------------------------------


def _inspect(client: docker.DockerClient, ref: str) -> dict[str, Any] | None:
    try:
        return client.api.inspect_image(ref)
    except docker.errors.ImageNotFound:
        return None


def _labels(attrs: dict[str, Any]) -> dict[str, str]:
    return (attrs.get("Config") or {}).get("Labels") or {}


def _current_mode(attrs: dict[str, Any]) -> BaseMode | None:
    """The base mode the image was built with, if its digest label matches today's inputs."""
    labels = _labels(attrs)
    try:
        mode = BaseMode(labels.get(LABEL_BASE_MODE, ""))
    except ValueError:
        return None
    if mode is BaseMode.AUTO or labels.get(LABEL_DIGEST) != build_digest(mode):
        return None
    return mode


def _resolve_mode(client: docker.DockerClient, base: BaseMode, log: Log) -> BaseMode:
    if base is not BaseMode.AUTO:
        return base
    if _inspect(client, BASE_ROOTFS_IMAGE) is not None:
        log(f"base: {BASE_ROOTFS_IMAGE} exists (a rootfs built from Debian packages)")
        return BaseMode.DEBIAN_PACKAGES
    reason = mmdebstrap_unusable_reason()
    if reason is None:
        log("base: building a Debian rootfs with mmdebstrap (no container registry needed)")
        return BaseMode.DEBIAN_PACKAGES
    log(f"base: {reason}; trying the registry for {REGISTRY_BASE}")
    return BaseMode.REGISTRY


# --- debian-packages base -----------------------------------------------------------------------


def _ensure_base_rootfs(client: docker.DockerClient, log: Log, refresh: bool) -> list[str]:
    """Make sure airlock-base:bookworm exists with today's packages; returns replaced image ids."""
    wanted = ",".join(PACKAGES)
    current = _inspect(client, BASE_ROOTFS_IMAGE)
    reason = mmdebstrap_unusable_reason()
    if current is not None:
        fresh = _labels(current).get(LABEL_BASE_PACKAGES) == wanted
        if fresh and not refresh:
            return []
        if reason is not None:
            # Keep what we have: the Dockerfile installs any missing package with apt.
            log(f"base: keeping the existing {BASE_ROOTFS_IMAGE}: cannot rebuild it ({reason})")
            return []
    if reason is not None:
        raise SandboxError(f"cannot build {BASE_ROOTFS_IMAGE}: {reason}; or use `airlock image build --base registry`")
    with tempfile.TemporaryDirectory(prefix="airlock-rootfs-") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        _run_mmdebstrap(tarball, log)
        log(f"base: importing the rootfs ({tarball.stat().st_size / 1e6:.0f} MB) as {BASE_ROOTFS_IMAGE}")
        repository, tag = BASE_ROOTFS_IMAGE.rsplit(":", 1)
        out = client.api.import_image(
            src=str(tarball),
            repository=repository,
            tag=tag,
            changes=[
                f"LABEL {LABEL_BASE_PACKAGES}={wanted}",
                f"ENV PATH={_DEBIAN_PATH}",
                'CMD ["/bin/bash"]',
            ],
        )
    if '"error"' in out:
        raise SandboxError(f"docker import of the base rootfs failed: {out.strip()[:300]}")
    return [current["Id"]] if current is not None else []


def _run_mmdebstrap(tarball: Path, log: Log) -> None:
    cmd = [
        "mmdebstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        # mmdebstrap copies the host's resolver and hostname in; they say nothing good about the host.
        '--customize-hook=rm -f "$1/etc/resolv.conf" "$1/etc/hostname"',
        SUITE,
        str(tarball),
    ]
    log("base: " + " ".join(cmd[:3]) + f" {SUITE} (about half a minute)")
    lines: list[str] = []
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            lines.append(line)
            log(line)
    if proc.wait() != 0:
        last = lines[-1] if lines else "no output"
        raise SandboxError(
            f"mmdebstrap failed (exit {proc.returncode}): {last}; check that apt reaches Debian's mirrors, or use `airlock image build --base registry`"
        )


# --- registry base ------------------------------------------------------------------------------


def _ensure_registry_base(client: docker.DockerClient, log: Log, refresh: bool, auto: bool) -> None:
    """Pull debian:bookworm-slim unless present, giving up soon when no registry answers."""
    if not refresh and _inspect(client, REGISTRY_BASE) is not None:
        return
    hint = (
        "for an offline build install mmdebstrap and run as root (`make setup`)"
        if auto
        else "check the registry, or use `airlock image build --base debian-packages`"
    )
    log(f"base: pulling {REGISTRY_BASE}")
    events: queue.Queue[tuple[str, Any]] = queue.Queue()

    def pull() -> None:
        try:
            repository, tag = REGISTRY_BASE.rsplit(":", 1)
            for event in client.api.pull(repository, tag=tag, stream=True, decode=True):
                events.put(("event", event))
            events.put(("done", None))
        except Exception as exc:  # handed to the waiting thread, which raises it as SandboxError
            events.put(("error", exc))

    # A thread so that a registry that never answers (dropped packets) costs seconds, not minutes.
    threading.Thread(target=pull, name="airlock-pull", daemon=True).start()
    wait = REGISTRY_FIRST_ANSWER_S
    while True:
        try:
            kind, item = events.get(timeout=wait)
        except queue.Empty:
            raise SandboxError(f"no answer from the registry for {REGISTRY_BASE} within {wait:.0f} s; {hint}") from None
        wait = REGISTRY_IDLE_S
        if kind == "done":
            return
        if kind == "error":
            raise SandboxError(f"cannot pull {REGISTRY_BASE}: {_one_line(item)}; {hint}")
        if item.get("error"):
            raise SandboxError(f"cannot pull {REGISTRY_BASE}: {_one_line(item['error'])}; {hint}")
        if item.get("status") and not item.get("progressDetail"):
            log(" ".join(str(item[k]) for k in ("id", "status") if item.get(k)))


# --- the build ----------------------------------------------------------------------------------


def _docker_build(
    client: docker.DockerClient,
    tag: str,
    base_ref: str,
    mode: BaseMode,
    digest: str,
    nocache: bool,
    log: Log,
) -> str:
    """Run the classic builder on sandbox_image/, streaming its output; returns the image id."""
    # The low-level API streams; client.images.build would only return once everything is done.
    stream = client.api.build(
        path=str(context_dir()),
        tag=tag,
        buildargs={"BASE": base_ref, "PACKAGES": " ".join(PACKAGES)},
        labels={LABEL_DIGEST: digest, LABEL_BASE_MODE: mode.value},
        rm=True,
        forcerm=True,  # no intermediate containers left behind, even after a failed step
        pull=False,  # the base is local by now; airlock-base:bookworm exists nowhere else
        nocache=nocache,
        decode=True,
        timeout=None,  # apt on a slow mirror may be silent for minutes
    )
    image_id = None
    for chunk in stream:
        if "error" in chunk:
            raise SandboxError(f"building {tag} failed: {_one_line(chunk['error'])}")
        for line in str(chunk.get("stream", "")).splitlines():
            if line.strip():
                log(line.rstrip())
        if isinstance(chunk.get("aux"), dict) and "ID" in chunk["aux"]:
            image_id = chunk["aux"]["ID"]
    attrs = _inspect(client, tag)
    if attrs is None or (image_id is not None and attrs["Id"] != image_id):
        raise SandboxError(f"building {tag} finished but the image is not tagged; see the output above")
    return attrs["Id"]


def _remove_quietly(client: docker.DockerClient, image_id: str) -> None:
    """Drop an image this build replaced; one still in use by a container simply stays."""
    try:
        client.api.remove_image(image_id)
    except docker.errors.APIError:
        pass


# --- probing the tools --------------------------------------------------------------------------

_PROBE = (
    f"for t in {' '.join(COMMANDS)}; do if command -v $t >/dev/null; then echo $t=1; else echo $t=0; fi; done; "
    "if python3 -c 'import pytest' 2>/dev/null; then echo pytest=1; else echo pytest=0; fi"
)


def _probe_tools(client: docker.DockerClient, image_id: str) -> dict[str, bool]:
    container = client.api.create_container(
        image_id,
        ["sh", "-c", _PROBE],
        labels={"airlock.probe": "1", **owner_tag()},
        network_disabled=True,
        host_config=client.api.create_host_config(network_mode="none", cap_drop=["ALL"], security_opt=["no-new-privileges"], read_only=True),
    )
    try:
        client.api.start(container)
        client.api.wait(container, timeout=60)
        out = client.api.logs(container, stdout=True, stderr=False).decode(errors="replace")
    finally:
        client.api.remove_container(container, force=True)
    found = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {name: found.get(name) == "1" for name in (*COMMANDS, "pytest")}


def _one_line(exc: object) -> str:
    if isinstance(exc, docker.errors.APIError) and exc.explanation:
        text = str(exc.explanation)
    else:
        text = str(exc)
    text = text.strip() or type(exc).__name__
    return text.splitlines()[0][:300]
