"""Where a batch's tasks go: --engine and --namespace read into engines with their limits, and each task to
the engine with the most room; an engine that is down, or being checked after a failure, gets none."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.batch.placement import Engine, mark_lost, parse_engines, pick, room, was_lost
from orchestrator.errors import UsageError


def test_engines_with_and_without_their_own_limit() -> None:
    engines = parse_engines("docker", ["unix:///var/run/docker.sock", "ssh://builder-2=8", "tcp://10.0.0.3:2376=1"], None, 3)
    assert [(e.location, e.jobs) for e in engines] == [("unix:///var/run/docker.sock", 3), ("ssh://builder-2", 8), ("tcp://10.0.0.3:2376", 1)]
    assert engines[1].env() == {"DOCKER_HOST": "ssh://builder-2"} and engines[1].run_options() == ["--backend", "docker"]
    [default] = parse_engines("docker", [], None, 4)
    assert (default.location, default.jobs, default.env()) == (None, 4, {})  # DOCKER_HOST's, as `airlock run` uses


def test_kubernetes_is_one_engine_in_its_namespace() -> None:
    [engine] = parse_engines("kubernetes", [], "airlock", 64)
    assert engine.jobs == 64 and engine.env() == {}
    assert engine.run_options() == ["--backend", "kubernetes", "--namespace", "airlock"]


@pytest.mark.parametrize(
    ("backend", "engines", "namespace", "message"),
    [
        ("docker", ["builder-2"], None, "give a Docker engine address"),
        ("docker", ["ssh://b=0"], None, "at least 1 task"),
        ("docker", ["ssh://b", "ssh://b=2"], None, "given twice"),
        ("docker", [], "airlock", "--namespace is for --backend kubernetes"),
        ("kubernetes", ["ssh://b"], None, "with --backend kubernetes use --namespace"),
        ("podman", [], None, "unknown sandbox backend"),
    ],
)
def test_bad_engines_are_one_clear_line(backend: str, engines: list[str], namespace: str | None, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_engines(backend, engines, namespace, 2)


def test_each_task_goes_where_there_is_most_room() -> None:
    local, remote = Engine("docker", "unix:///var/run/docker.sock", 2), Engine("docker", "ssh://b2", 3)
    busy: list[Engine] = []
    order = []
    while (engine := pick([local, remote], busy)) is not None:
        busy.append(engine)
        order.append(engine.location)
    assert order == ["ssh://b2", "unix:///var/run/docker.sock", "ssh://b2", "unix:///var/run/docker.sock", "ssh://b2"]  # 5 = 2 + 3
    busy.remove(local)
    assert pick([local, remote], busy) is local


def test_an_engine_down_or_under_suspicion_gets_no_task(tmp_path: Path) -> None:
    local, remote = Engine("docker", "unix:///var/run/docker.sock", 2), Engine("docker", "ssh://b2", 8)
    remote.suspects.append(tmp_path)  # a task of it failed: no new one until it is known to answer
    assert room(remote, []) == 0 and pick([local, remote], []) is local
    remote.suspects.clear()
    remote.down = "connection refused"
    assert pick([local, remote], [local, local]) is None
    mark_lost(tmp_path, remote)
    assert was_lost(tmp_path) and "ssh://b2: connection refused" in (tmp_path / "engine-lost.txt").read_text()
