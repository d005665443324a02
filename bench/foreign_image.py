"""--image on an image with no Python, git, tar or ripgrep (made here from the sandbox image, as the tests
make theirs): the one-time cost of adding airlock's tool runtime (the derived image), what it adds to the
image, and a run's start-up on it once made, beside the same run on the sandbox image."""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors

from orchestrator.demo import CALCULATOR_REPO
from orchestrator.sandbox.docker_tool_runtime import DERIVED_LABEL, FROM_LABEL
from orchestrator.sandbox.spec import DEFAULT_IMAGE

STRIP = "rm -rf /usr/bin/python* /usr/lib/python3* /usr/bin/git* /usr/lib/git-core /usr/bin/tar /usr/bin/rg /opt/airlock-runtime"
TAG = "airlock-bench-foreign:plain"
STARTS = 3


def main(run_once: Callable[..., Any], cache: Path) -> None:
    client = docker.from_env()
    container = client.containers.run(DEFAULT_IMAGE, ["sh", "-c", STRIP], user="root", detach=True, labels={"airlock.bench": "1"})
    try:
        container.wait(timeout=120)
        image = container.commit(repository=TAG.split(":")[0], tag=TAG.split(":")[1], changes=["LABEL airlock.runtime=", "LABEL airlock.bench=1"])
    finally:
        container.remove(force=True)
    try:
        first = run_once(CALCULATOR_REPO, "--image", TAG, cache=cache)  # the derived image is built in it
        made = [run_once(CALCULATOR_REPO, "--image", TAG, cache=cache) for _ in range(STARTS)]
        plain = [run_once(CALCULATOR_REPO, cache=cache) for _ in range(STARTS)]
        [derived] = client.images.list(filters={"label": [DERIVED_LABEL, f"{FROM_LABEL}={image.id}"]})
        added = (derived.attrs.get("Size") or 0) - (image.attrs.get("Size") or 0)
        print("--image on an image with no Python, git, tar or ripgrep (the tool runtime added to it)")
        print(f"  first run, runtime added: CLI start -> first tool result  {first.first_result:.2f} s   (the derived image adds {added / 1024**2:.0f} MiB)")
        print(f"  once added:               CLI start -> first tool result  {statistics.median(t.first_result for t in made):.2f} s")
        print(f"  baseline: the sandbox image, same run                     {statistics.median(t.first_result for t in plain):.2f} s\n")
    finally:
        for derived in client.images.list(filters={"label": [DERIVED_LABEL, f"{FROM_LABEL}={image.id}"]}):
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(derived.id, force=True)
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(image.id, force=True)
