"""The CLI's exit skips the interpreter's teardown, but nothing an exit owes is lost: the exit code, what
was printed, the atexit handlers, the threads still at work; and a profiler still gets its normal exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import PROJECT, airlock_env

# The real entry point, after starting a thread that is not a daemon and registering an atexit handler,
# each of which leaves a file behind only if it runs to its end.
PROGRAM = """
import atexit, pathlib, sys, threading, time
out = pathlib.Path(sys.argv[1])
def late():
    time.sleep(0.5)
    (out / "thread").write_text("finished")
threading.Thread(target=late).start()
atexit.register(lambda: (out / "atexit").write_text("ran"))
from orchestrator.cli import main
sys.argv = ["airlock", *sys.argv[2:]]
main()
"""


def run(tmp_path: Path, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, *prefix, "-c", PROGRAM, str(tmp_path), *args]
    return subprocess.run(command, capture_output=True, text=True, env=airlock_env(), cwd=PROJECT, timeout=120)


def test_a_successful_command_prints_everything_and_exits_0(tmp_path: Path) -> None:
    proc = run(tmp_path, "policy", "show", str(PROJECT / "policies" / "strict.toml"))
    assert proc.returncode == 0, proc.stderr
    assert "max_steps" in proc.stdout and proc.stdout.endswith("\n")
    assert (tmp_path / "thread").read_text() == "finished"
    assert (tmp_path / "atexit").read_text() == "ran"


def test_an_error_keeps_its_exit_code_and_its_line(tmp_path: Path) -> None:
    proc = run(tmp_path, "apply", str(tmp_path / "missing.diff"), "--repo", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.startswith("airlock: error:") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert (tmp_path / "thread").exists() and (tmp_path / "atexit").exists()


def test_under_a_profiler_the_exit_is_the_normal_one(tmp_path: Path) -> None:
    """cProfile writes its file only once the program returns to it, which a fast exit would skip."""
    profile = tmp_path / "cli.prof"
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    command = [sys.executable, "-m", "cProfile", "-o", str(profile), str(script), str(tmp_path), "policy", "show", str(PROJECT / "policies" / "strict.toml")]
    proc = subprocess.run(command, capture_output=True, text=True, env=airlock_env(), cwd=PROJECT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert profile.stat().st_size > 0
