"""The image a run's sandboxes start from: the project's own (a devcontainer's image, or its Dockerfile built
through the egress proxy), else --image or the sandbox image; then airlock's tool runtime added to it when
it does not carry it (orchestrator.sandbox.docker_tool_runtime)."""

from __future__ import annotations

import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

from orchestrator.errors import SandboxError
from orchestrator.policy.model import SetupPolicy
from orchestrator.run.project_image import ProjectImage
from orchestrator.run.setup import SetupFailed
from orchestrator.run.setup_causes import CauseWatch
from orchestrator.run.setup_inputs import read_inside, tree_digest
from orchestrator.run.trace import Trace
from orchestrator.sandbox.base import Backend, ImageBuild
from orchestrator.sandbox.egress import normalise_hosts
from orchestrator.sandbox.repo_tar import CopyStats, RepoScan, write_tar
from orchestrator.sandbox.spec import SandboxSpec
from orchestrator.sizes import human_size

BUILD_LOG = "image-build.log"


def prepare_image(
    backend: Backend, spec: SandboxSpec, project: ProjectImage | None, scan: RepoScan, hidden: list[str], setup: SetupPolicy, out: Path, trace: Trace
) -> tuple[SandboxSpec, dict[str, Any]]:
    """`spec` on the image the run's sandboxes start from, and what run.json records of it. SetupFailed when
    the project's Dockerfile does not build."""
    recorded: dict[str, Any] = {}
    if project is not None:
        for line in project.ignored:
            trace.note(line)
        recorded["project_image"] = project.record()
        if project.dockerfile is None:
            trace.note(f"{project.source}: the sandbox runs on its image {project.image}")
            spec = replace(spec, image=str(project.image))
        else:
            spec = replace(spec, image=_build(backend, spec, project, scan, hidden, setup, out, trace, recorded["project_image"]))
    spec, runtime = backend.with_tool_runtime(spec, trace.note)
    return spec, recorded | runtime


def _build(
    backend: Backend, spec: SandboxSpec, project: ProjectImage, scan: RepoScan, hidden: list[str], setup: SetupPolicy, out: Path, trace: Trace,
    record: dict[str, Any],
) -> str:  # fmt: skip
    dockerfile = str(project.dockerfile)
    text = read_inside(scan.root, dockerfile, hidden)
    context = _context(scan, project.context)
    if text is None or context is None:
        raise SetupFailed(f"{project.source}: the Dockerfile {dockerfile} or its context {project.context or '.'} is not in the repo any more")
    archive: list[bytes] = []
    write_tar(context, archive.append, into="/")
    prefix = f"{project.context}/" if project.context else ""
    hosts = normalise_hosts(setup.allow_hosts)
    causes = CauseWatch()
    with open(out / BUILD_LOG, "w", encoding="utf-8") as log:

        def line(text: str) -> None:  # each line of the build's output: into its log, and read for a cause
            print(text, file=log, flush=True)
            causes.line(text)

        build = ImageBuild(
            context=b"".join(archive), context_digest=tree_digest(context), dockerfile=dockerfile[len(prefix) :], dockerfile_text=text,
            args=project.args, target=project.target, allow_hosts=hosts, memory=setup.memory, timeout=setup.timeout,
            log=line,
        )  # fmt: skip
        trace.note(f"{project.source}: the sandbox image is {dockerfile}, built with no way out but a proxy to: {', '.join(hosts) or 'none'}")
        try:
            tag, built = backend.build_image(spec, build)
        except SandboxError as exc:
            raise SetupFailed(f"{build_cause(causes, setup)}{exc} (the build's output: {BUILD_LOG})") from None
    record |= {"image": tag, "cache": "build" if built else "hit"}
    trace.note(f"{project.source}: {'built' if built else 'found (its inputs unchanged, not built again)'} {tag}")
    return tag


def build_cause(causes: CauseWatch, setup: SetupPolicy) -> str:
    """What the build's output says went wrong, as the start of the error ("" when it says nothing telling)."""
    if "certificate" in causes.seen:  # the setup's CA bundle never reaches a Dockerfile's RUN steps
        return "a certificate on the way to the registry is not trusted by the image (a Dockerfile's RUN steps trust only the image's own CAs): "
    cause = causes.explain(ca_source="the image's own CAs", memory=human_size(setup.memory), disk="the engine's")
    return f"{cause}: " if cause else ""


def _context(scan: RepoScan, folder: str) -> RepoScan | None:
    """The scan's entries below `folder` (a real folder of it), relative to it; None when it is no folder."""
    if not folder:
        return scan
    if not any(rel == folder and stat.S_ISDIR(st.st_mode) for rel, st in scan.entries):
        return None
    prefix = folder + "/"
    return RepoScan(scan.root / folder, [(rel[len(prefix) :], st) for rel, st in scan.entries if rel.startswith(prefix)], CopyStats())
