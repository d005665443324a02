"""`make bench`: airlock's speed next to a baseline measured in the same run, on this machine.

1. Tool-call round trip: the persistent tool server (one attached exec for the whole run) versus one
   `docker exec` per call, both running `bash -c true` in the same sandbox.
2. Start-up: from launching `airlock run` to the first model request reaching the (scripted) API,
   versus a bare `docker run --rm <image> true`.
3. Setup (bench/setup_phase.py): building an environment from the real package index, then the start-up
   of a run whose environment is a cache hit, versus the same run without setup; the environment's size.
4. Tokens (bench/tokens.py): the calculator exercise and a 40-step run, input billed at full price
   versus cache price per step, next to a loop that neither caches nor trims.
5. Host (bench/host.py): the host's memory and CPU per concurrent batch task, versus a fresh interpreter per run.
1 and 2 are measured under runc and, when it is registered, under gVisor's runsc, side by side.
Numbers, not pass/fail: machines are noisy, so nothing here is asserted.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import docker

from bench import host, setup_phase, tokens
from orchestrator.demo import CALCULATOR_REPO
from orchestrator.providers.scripted import ScriptedModelServer, reply, text
from orchestrator.run.config import new_run_id
from orchestrator.sandbox.docker_backend import DockerBackend
from orchestrator.sandbox.driver import Sandbox
from orchestrator.sandbox.spec import DEFAULT_IMAGE, SandboxSpec

CALLS = 60
STARTS = 5


def _ms(seconds: list[float]) -> str:
    return f"median {statistics.median(seconds) * 1000:7.1f} ms   (min {min(seconds) * 1000:.1f}, max {max(seconds) * 1000:.1f}, n={len(seconds)})"


def tool_round_trip(client: docker.DockerClient, runtime: str) -> tuple[list[float], list[float]]:
    spec = SandboxSpec(image=DEFAULT_IMAGE, run_id=f"bench-{new_run_id()}", runtime=runtime)
    box = DockerBackend(client=client).start(spec)
    sandbox = Sandbox(box, spec)
    try:
        sandbox.copy_in(CALCULATOR_REPO)
        sandbox.install_tools()
        channel = sandbox.start_tool_server()
        server, per_exec = [], []
        for _ in range(CALLS):
            started = time.perf_counter()
            channel.call("run_bash", {"command": "true"}, timeout=30)
            server.append(time.perf_counter() - started)
            started = time.perf_counter()
            box.container.exec_run(["bash", "-c", "true"], user="1000:1000", workdir="/workspace")
            per_exec.append(time.perf_counter() - started)
        channel.close()
    finally:
        sandbox.remove()
    return server, per_exec


def time_to_first_request(repo: Path = CALCULATOR_REPO, *options: str) -> list[float]:
    times = []
    for _ in range(STARTS):
        first = threading.Event()

        def answer(request: dict, first: threading.Event = first) -> dict:
            first.set()
            return reply(text("done"))

        with ScriptedModelServer([answer]) as api, tempfile.TemporaryDirectory() as out:
            env = {**os.environ, "ANTHROPIC_API_KEY": "bench", "ANTHROPIC_BASE_URL": api.base_url}
            started = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", "run", str(repo), "--task", "bench", "--out", str(Path(out) / "run"), *options],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            first.wait(120)
            times.append(time.perf_counter() - started)
            proc.wait(120)
    return times


def bare_container_start(client: docker.DockerClient, runtime: str) -> list[float]:
    times = []
    for _ in range(STARTS):
        started = time.perf_counter()
        client.containers.run(DEFAULT_IMAGE, ["true"], remove=True, network_mode="none", runtime=runtime, labels={"airlock.bench": "1"})
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    client = docker.from_env()
    runtimes = ["runc", *(["runsc"] if "runsc" in (client.info().get("Runtimes") or {}) else [])]
    print(f"airlock bench on {os.cpu_count()} cores, image {DEFAULT_IMAGE}, runtimes {', '.join(runtimes)}\n")
    print("tool call round trip (bash -c true)")
    for runtime in runtimes:
        server, per_exec = tool_round_trip(client, runtime)
        print(f"  {runtime:5} airlock persistent tool server   {_ms(server)}")
        print(f"  {runtime:5} baseline: one docker exec a call {_ms(per_exec)}")
        print(f"  {runtime:5} speed-up: {statistics.median(per_exec) / statistics.median(server):.1f}x")
    print("\nstart-up")
    for runtime in runtimes:
        print(f"  {runtime:5} airlock run -> first model request {_ms(time_to_first_request(CALCULATOR_REPO, '--runtime', runtime))}")
        print(f"  {runtime:5} baseline: docker run --rm true     {_ms(bare_container_start(client, runtime))}")
    print()
    setup_phase.main(time_to_first_request, _ms)
    tokens.main()
    host.main()


if __name__ == "__main__":
    main()
