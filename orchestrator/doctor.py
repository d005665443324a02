"""`airlock doctor`: is this machine ready to run the sandbox, and is it safe to?

run_checks returns plain data; render shows it. Nothing here prints a secret.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions

from orchestrator.errors import SandboxError
from orchestrator.sandbox.docker_client import DockerUnreachable, docker_client, engine_address, unreachable_fix
from orchestrator.sandbox.docker_tool_runtime import carries_runtime, refusal
from orchestrator.sandbox.image import DEFAULT_IMAGE, image_info
from orchestrator.sandbox.spec import SandboxSpec
from orchestrator.terminal import safe

# runc before 1.1.12 leaks a host file descriptor into the container (CVE-2024-21626,
# "Leaky Vessels"): a process in the container can reach the host filesystem through it.
RUNC_FIXED = (1, 1, 12)
RUNC_CVE = "CVE-2024-21626"
# Distribution builds with the fix backported to an older upstream version (full package versions).
RUNC_BACKPORTS = {
    "1.1.5+ds1-1+deb12u1",  # Debian 12 bookworm, DSA-5615-1
}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""  # what to do when not ok; empty when ok
    # False for warnings and information: the lead may still exit 0 when only these fail.
    required: bool = True


def run_checks(image: str = DEFAULT_IMAGE) -> list[Check]:
    """All checks, in the order a person would fix them."""
    checks: list[Check] = []
    try:
        client = docker_client()
    except DockerUnreachable as exc:
        checks.append(Check("Docker daemon", False, f"not reachable at {exc.where}: {exc.cause}", unreachable_fix(exc.where)))
        skipped = "skipped: Docker is not reachable"
        checks += [
            Check("runc", False, skipped, required=False),
            Check("sandbox image", False, skipped, f"after Docker works: airlock image build --tag {image}"),
            Check("gVisor (runsc)", True, skipped, required=False),
        ]
    else:
        try:
            info, version = client.info(), client.version()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            checks.append(Check("Docker daemon", False, f"answers ping but not `info`: {exc}", "restart dockerd"))
        else:
            checks.append(_daemon_check(info, version))
            checks.append(_runc_check(info, version))
            checks.append(image_check := _image_check(client, image))
            checks.append(_gvisor_check(client, info, image if image_check.ok else None))
        finally:
            client.close()
    return checks + model_checks()


def model_checks() -> list[Check]:
    """The API key and the optional provider: the same whichever backend runs the sandbox."""
    return [_api_key_check(), _openai_check()]


def _daemon_check(info: dict[str, Any], version: dict[str, Any]) -> Check:
    cgroup = info.get("CgroupVersion") or "?"
    detail = (
        f"Docker {version.get('Version', '?')} at {engine_address()}, API {version.get('ApiVersion', '?')}, "
        f"storage {info.get('Driver', '?')}, cgroup v{cgroup} ({info.get('CgroupDriver', '?')})"
    )
    return Check("Docker daemon", True, detail)


def runc_versions(info: dict[str, Any], version: dict[str, Any]) -> list[str]:
    """What the daemon says about its runc, most specific first.

    Debian and Ubuntu report the package version (with its security suffix) as the commit;
    upstream builds report "1.1.12" and "v1.1.12-0-g51d5e94"; some report only a hash.
    """
    found: list[str] = []
    for component in version.get("Components") or []:
        if str(component.get("Name", "")).lower() == "runc":
            found += [
                str((component.get("Details") or {}).get("GitCommit") or ""),
                str(component.get("Version") or ""),
            ]
    found.append(str((info.get("RuncCommit") or {}).get("ID") or ""))
    return list(dict.fromkeys(v for v in found if v))


def runc_is_fixed(versions: list[str]) -> bool | None:
    """True if this runc has the CVE-2024-21626 fix, False if not, None if no version is readable."""
    verdict = None
    for v in versions:
        if v in RUNC_BACKPORTS or _host_package_has_fix(v):
            return True
        m = re.match(r"v?(\d+)\.(\d+)\.(\d+)", v)
        if m:
            if tuple(int(x) for x in m.groups()) >= RUNC_FIXED:
                return True
            verdict = False
    return verdict


def _host_package_has_fix(full_version: str) -> bool:
    """When the daemon's runc is this host's Debian/Ubuntu package, its changelog names the CVEs it fixes."""
    if shutil.which("dpkg-query") is None:
        return False
    try:
        installed = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "runc"], capture_output=True, text=True, timeout=10).stdout.strip()
        if installed != full_version:
            return False
        with gzip.open(Path("/usr/share/doc/runc/changelog.Debian.gz"), "rt", errors="replace") as f:
            return RUNC_CVE in f.read()
    except (OSError, subprocess.SubprocessError):
        return False


def _runc_check(info: dict[str, Any], version: dict[str, Any]) -> Check:
    versions = runc_versions(info, version)
    runtime = info.get("DefaultRuntime", "runc")
    if not versions:
        return Check("runc", False, "the daemon did not report a runc version", "check `docker info`", required=False)
    shown = versions[0]
    fixed = runc_is_fixed(versions)
    if fixed:
        return Check("runc", True, f"{shown} (default runtime {runtime}); has the {RUNC_CVE} fix", required=False)
    if fixed is None:
        return Check(
            "runc",
            False,
            f"cannot tell whether runc {shown} has the {RUNC_CVE} fix",
            "make sure runc is 1.1.12 or newer",
            required=False,
        )
    return Check(
        "runc",
        False,
        f'runc {shown} is older than 1.1.12 and open to {RUNC_CVE} ("Leaky Vessels"): a process in a '
        "container can escape to the host filesystem through a leaked file descriptor",
        "upgrade runc to 1.1.12 or newer (the runc or containerd.io package, e.g. `apt-get install --only-upgrade runc`), then restart dockerd",
        required=False,
    )


def _image_check(client: docker.DockerClient, image: str) -> Check:
    if image != DEFAULT_IMAGE and (foreign := _foreign_image_check(client, image)) is not None:
        return foreign
    fix = f"airlock image build --tag {image}" if image != DEFAULT_IMAGE else "airlock image build"
    try:
        info = image_info(client, image)
    except (docker.errors.DockerException, requests.exceptions.RequestException, SandboxError) as exc:
        return Check("sandbox image", False, f"cannot inspect {image}: {exc}", fix)
    if not info.present:
        return Check("sandbox image", False, f"{image} is not built", fix)
    short = (info.image_id or "")[7:19]
    if info.probe_error:
        return Check(
            "sandbox image",
            False,
            f"{image} ({short}) does not start: {info.probe_error}",
            fix + " --rebuild",
        )
    missing = [name for name, found in info.tools.items() if not found]
    if missing:
        return Check("sandbox image", False, f"{image} ({short}) lacks {', '.join(missing)}", fix + " --rebuild")
    if not info.up_to_date:
        return Check("sandbox image", False, f"{image} ({short}) is out of date with sandbox_image/Dockerfile", fix)
    tools = ", ".join(info.tools)
    return Check("sandbox image", True, f"{image} ({short}), base {info.base_mode}, has {tools}")


def _foreign_image_check(client: docker.DockerClient, image: str) -> Check | None:
    """An --image that is not airlock's (no tool runtime): whether a run can add the runtime to it; None for
    one of airlock's own (or none), which the sandbox image's checks judge."""
    try:
        attrs = client.api.inspect_image(image)
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return None  # missing or unreadable: the sandbox image's checks say so, and how to build it
    if carries_runtime(attrs):
        return None
    try:
        why = refusal(client, attrs, SandboxSpec(image=image, run_id="doctor"))
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        return Check("sandbox image", False, f"cannot look into {image}: {exc}", "check the Docker daemon")
    if why is not None:
        return Check(
            "sandbox image",
            False,
            why,
            "airlock image build" if DEFAULT_IMAGE in why else f"give an image with a glibc userland for {attrs.get('Architecture')}",
        )
    return Check("sandbox image", True, f"{image} ({attrs['Id'][7:19]}): not airlock's; a run adds the tool runtime of {DEFAULT_IMAGE} to it")


GVISOR_FIX = "on a root Debian shell: bash scripts/ensure-gvisor.sh --reload (or register runsc in /etc/docker/daemon.json)"


def _gvisor_check(client: docker.DockerClient, info: dict[str, Any], image: str | None) -> Check:
    """Optional: a second wall, gVisor's own kernel, for `--runtime runsc`. Registered, and does a sandbox start under it?"""
    runsc = (info.get("Runtimes") or {}).get("runsc")
    if runsc is None:
        return Check("gVisor (runsc)", False, "not registered with the Docker daemon (optional: runc is used)", GVISOR_FIX, required=False)
    where = " ".join([str(runsc.get("path", "runsc")), *map(str, runsc.get("runtimeArgs") or [])])
    if image is None:
        return Check("gVisor (runsc)", True, f"registered ({where}); not tried, the sandbox image is not ready", required=False)
    try:
        volumes = (client.api.inspect_image(image).get("Config") or {}).get("Volumes") or {}
        kernel = client.containers.run(
            image, ["-r"], entrypoint=["uname"], runtime="runsc", network_mode="none", cap_drop=["ALL"], read_only=True, remove=True,
            tmpfs={folder: "" for folder in volumes}, labels={"airlock.probe": "1"},  # tmpfs: an image's VOLUME makes no volume
        )  # fmt: skip
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        return Check("gVisor (runsc)", False, f"registered ({where}), but a sandbox does not start under it: {exc}", GVISOR_FIX, required=False)
    shown = kernel.decode("utf-8", "replace").strip() if isinstance(kernel, bytes) else "?"
    return Check("gVisor (runsc)", True, f"registered ({where}); a sandbox starts under it with gVisor's kernel {shown}: use --runtime runsc", required=False)


def _api_key_check() -> Check:
    if os.environ.get("ANTHROPIC_API_KEY", "").strip():
        return Check("ANTHROPIC_API_KEY", True, "set")
    return Check(
        "ANTHROPIC_API_KEY",
        False,
        "not set: `airlock run` cannot call Claude",
        "export ANTHROPIC_API_KEY=...  (or try `airlock demo`, which needs no key)",
        required=not os.environ.get("OPENAI_API_KEY", "").strip(),  # not needed by who only uses --provider openai
    )


def _openai_check() -> Check:
    """Informational: the optional provider for OpenAI-compatible servers."""
    from orchestrator.providers import installed

    if not installed("openai"):
        return Check("openai provider", False, "the openai package is not installed (optional)", "pip install 'airlock[openai]'", required=False)
    if not os.environ.get("OPENAI_API_KEY", "").strip():
        fix = "export OPENAI_API_KEY=...  (any value for a local server that needs no key)"
        return Check("openai provider", False, "installed; OPENAI_API_KEY is not set", fix, required=False)
    return Check("openai provider", True, "installed, OPENAI_API_KEY set", required=False)


def render(checks: list[Check], console: Any) -> None:
    """A rich table: one row per check, the fix under each failing one."""
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("", width=4)
    table.add_column("check", style="bold")
    table.add_column("result")
    for check in checks:
        if check.ok:
            mark = Text("ok", style="green")
        elif check.required:
            mark = Text("FAIL", style="bold red")
        else:
            mark = Text("warn", style="yellow")
        result = safe(check.detail)  # it quotes the engine, the image and its probe's output
        if not check.ok and check.fix:
            result.append("\nfix: ", style="dim").append_text(safe(check.fix, "cyan"))
        table.add_row(mark, check.name, result)
    console.print(table)
