"""The setup phase's costs: building an environment (a real package from the real index, through the
egress proxy), the start-up of a run whose environment is a cache hit next to the same run without setup
(goal: at most 10% more), and the size of the environment the image adds."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from orchestrator.providers.scripted import ScriptedModelServer, reply, text


def _build(repo: Path, options: list[str]) -> dict:
    with ScriptedModelServer([reply(text("done"))]) as api, tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "ANTHROPIC_API_KEY": "bench", "ANTHROPIC_BASE_URL": api.base_url}
        cmd = [sys.executable, "-m", "orchestrator", "run", str(repo), "--task", "bench", "--out", f"{out}/run", "--rebuild-env", *options]
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)
        return json.loads(Path(out, "run", "run.json").read_text())


PROJECT = Path(__file__).resolve().parent.parent
NODE_FIXTURE = PROJECT / "tests" / "fixtures" / "node_project"


def _python_project(repo: Path) -> None:
    (repo / "requirements.txt").write_text("iniconfig==2.0.0\n")
    (repo / "test_it.py").write_text("import iniconfig\n\n\ndef test_it():\n    assert iniconfig.IniConfig\n")


def _node_project(repo: Path) -> None:
    shutil.copytree(NODE_FIXTURE, repo, dirs_exist_ok=True)


# (what, how its files are made): each built from the real registry through the egress proxy.
PROJECTS: list[tuple[str, Callable[[Path], None]]] = [
    ("python, requirements.txt: iniconfig, from the real package index", _python_project),
    ("node, package-lock.json: npm ci of is-number, from the real npm registry", _node_project),
]


def main(first_request: Callable[..., list[float]], fmt: Callable[[list[float]], str]) -> None:
    for what, make in PROJECTS:
        with tempfile.TemporaryDirectory() as tmp:
            repo = Path(tmp) / "project"
            repo.mkdir()
            make(repo)
            options = ["--setup", "auto"]  # what a user gets: the host's CA bundle is trusted by default
            record = _build(repo, options)
            setup = record.get("setup") or {}
            if setup.get("cache") != "build":
                print(f"setup ({what}): the environment could not be built ({record.get('error')}); skipped\n")
                continue
            print(f"setup phase ({what}; the setup sandbox got {setup['inputs']['mode']})")
            print(f"  build: {setup['duration_s']:.1f} s (proxy, setup sandbox, install, image)   environment adds {setup['env_bytes'] / 1024**2:.1f} MiB")
            hit = first_request(repo, *options)
            plain = first_request(repo)
            print(f"  cache hit -> first model request  {fmt(hit)}")
            print(f"  baseline: no setup               {fmt(plain)}")
            print(f"  cache hit costs {statistics.median(hit) / statistics.median(plain) * 100 - 100:+.0f}% start-up (goal: at most +10%)\n")
            subprocess.run([sys.executable, "-m", "orchestrator", "env", "rm", setup["key"]], stdout=subprocess.DEVNULL, check=False)
