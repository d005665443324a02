"""The sandbox's .git: history the agent can use, and nothing hidden or secret reachable through it.

The attack of issue 10 (item 5), performed by a scripted model under policies/strict.toml: the repo
committed `.env` and `deploy.pem`, its `.git/config` holds a remote URL with a token and a credential
helper, a stash holds a secret. The agent asks git (and the files of `.git`) for all of it. Nothing may
come back to the model, and the model provider (the scripted server) must never see it either.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from helpers import PROJECT, airlock

from orchestrator.patch.neutral_git import run_git
from orchestrator.providers.scripted import reply, text, tool_use

IDENTITY = ["-c", "user.name=dev", "-c", "user.email=dev@example.invalid"]
SECRET = "AWS_SECRET=hunter2-from-history"
KEY = "secret-key-material-from-deploy-pem"
TOKEN = "ghp_0123456789TOKENfromremoteurl"
STASHED = "stashed-secret-value"
STRICT = str(PROJECT / "policies" / "strict.toml")


def git(repo: Path, *args: str) -> str:
    proc = run_git(list(args), git_dir=repo / ".git", work_tree=repo, cwd=repo)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode()


def commit(repo: Path, message: str, files: dict[str, str | None]) -> None:
    for rel, data in files.items():
        if data is None:
            (repo / rel).unlink()
        else:
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            (repo / rel).write_text(data)
    git(repo, "add", "-A")
    git(repo, *IDENTITY, "commit", "--quiet", "-m", message)


def make_repo(root: Path, commits: int = 3) -> Path:
    root.mkdir()
    git(root, "init", "--quiet", "--template=", "--initial-branch=main")
    commit(root, "start", {"app.py": "def answer():\n    return 41\n", ".env": SECRET + "\n", "deploy.pem": KEY + "\n"})
    commit(root, "forget the env file", {".env": None})
    for n in range(2, commits):
        commit(root, f"change {n}", {"notes.txt": f"note {n}\n"})
    return root


def everything_the_model_saw(result, api) -> str:
    return json.dumps([event for event in result.events() if event["type"] == "tool_call"]) + json.dumps(api.requests)


def test_nothing_hidden_or_secret_is_reachable_through_the_sandbox_git(run_scripted, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "leaky")
    with open(repo / ".git" / "config", "a") as config:
        config.write(f'[remote "origin"]\n\turl = https://x-access-token:{TOKEN}@github.com/o/r.git\n[credential]\n\thelper = store\n')
    (repo / "app.py").write_text(f"# {STASHED}\n")
    git(repo, *IDENTITY, "stash", "--quiet")
    probes = [
        "git show HEAD:.env; git show HEAD:deploy.pem; git log --all -p --binary | head -c 200000",
        "git cat-file --batch-all-objects --batch | head -c 500000",
        "cat .git/config; git config --list --show-origin; git remote -v; git stash list; git reflog; git branch -a",
        "grep -rl -e 'hunt[e]r2' -e 'ghp[_]' -e 'secret[-]key' -e 'stash[e]d' .git /var/lib/airlock /home/airlock /tmp; echo grep-exit=$?",
        "git log --format='%H %s'; git status --short; cat .git/shallow 2>/dev/null; ls .git",
        "git fsck --strict --no-dangling 2>&1; echo fsck-exit=$?",
    ]
    turns = [reply(*(tool_use("run_bash", command=probe) for probe in probes)), reply(text("done"))]
    result, api = run_scripted(repo, turns, "--policy", STRICT, "--git-history", "full")
    assert result.exit_code == 0, result.stdout + result.stderr
    seen = everything_the_model_saw(result, api)
    for secret in (SECRET, "hunter2", KEY, TOKEN, STASHED, "x-access-token", "credential"):
        assert secret not in seen, secret
    outputs = [call["output"] for call in result.events("tool_call")]
    assert "grep-exit=1" in outputs[3]  # grep found nothing anywhere
    assert outputs[5].startswith("fsck-exit=0\n"), outputs[5]  # silent, and the rewritten history is a valid repository to the sandbox's git
    assert "fatal: path '.env' does not exist in 'HEAD'" in outputs[0]
    # The history itself is there, rewritten without the hidden files (so the commit ids are new).
    log = outputs[4]
    assert "forget the env file" in log and "start" in log and "change 2" in log
    history = result.record["snapshot"]["history"]
    assert history["commits"] == 3 and history["rewritten_commits"] == 3 and history["hidden_paths"] == 2
    assert git(repo, "rev-parse", "HEAD").strip() not in log
    # And the terminal said what was left out.
    assert "hidden by policy: 1 path not copied into the sandbox, e.g. deploy.pem" in result.stdout
    assert "git history: the full history of branch main; 2 hidden paths removed from 3 commits" in result.stdout
    shown = airlock("show", str(result.out))  # and so does the review of the run
    assert "hidden by policy: 1 path not copied into the sandbox, e.g. deploy.pem; 2 removed from its git history" in shown.stdout


def test_recent_history_is_a_working_shallow_clone(run_scripted, tmp_path: Path) -> None:
    """git log, diff, blame and status behave as in a shallow clone: the user's uncommitted change and the
    agent's own show as changes; the commit ids are the repo's own when nothing hidden was ever committed."""
    repo = tmp_path / "plain"
    repo.mkdir()
    git(repo, "init", "--quiet", "--template=", "--initial-branch=trunk")
    commit(repo, "first", {"app.py": "def answer():\n    return 41\n"})
    for n in range(1, 56):
        commit(repo, f"change {n}", {"notes.txt": f"note {n}\n"})
    (repo / "notes.txt").write_text("uncommitted by the user\n")
    head = git(repo, "rev-parse", "HEAD").strip()
    probe = "git rev-list --count HEAD; git rev-parse HEAD; git status --short; git diff --stat; git blame -s app.py | head -1; git log -1 --format=%s"
    turns = [
        reply(tool_use("edit_file", path="app.py", old_str="return 41", new_str="return 42"), tool_use("run_bash", command=probe)),
        reply(text("done")),
    ]
    result, api = run_scripted(repo, turns)
    assert result.exit_code == 0, result.stdout + result.stderr
    output = result.events("tool_call")[1]["output"]
    count, shown_head, *rest = output.splitlines()
    assert count == "50" and shown_head == head
    assert " M app.py" in rest and " M notes.txt" in rest
    assert "change 55" in output
    assert re.search(r"^\^[0-9a-f]+ +1\) def answer", output, re.M)  # blame stops at the shallow boundary, marked ^
    system = api.requests[0]["system"][0]["text"]
    assert "only its last 50 generations of commits (a shallow clone" in system and "branch trunk" in system
    assert result.record["snapshot"]["history"]["shallow"] is True
    assert b"+    return 42\n" in result.patch and b"notes.txt" not in result.patch  # the user's own change is not the agent's


def test_no_history_means_no_git_and_the_model_is_told(run_scripted, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    turns = [reply(tool_use("run_bash", command="ls -a; git status")), reply(text("done"))]
    result, api = run_scripted(repo, turns, "--git-history", "none")
    assert result.exit_code == 0, result.stdout + result.stderr
    output = result.events("tool_call")[0]["output"]
    assert ".git" not in output.split("fatal:")[0] and "not a git repository" in output
    assert "There is no .git: the repository's git history was left out" in api.requests[0]["system"][0]["text"]
    assert "no git history in the sandbox: git history: none was chosen" in result.stdout
    assert result.record["policy"]["sandbox"]["git_history"] == "none"
