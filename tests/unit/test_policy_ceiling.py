"""The operator's policy is a ceiling a batch task can only tighten; prices come from the operator; a
tasks file's local repos are confined. (tests/docker/test_batch_ceiling.py makes the attack for real.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.batch.ceiling import within
from orchestrator.batch.tasks import Defaults, load_tasks
from orchestrator.policy.commands import allowed_by_both, check_command
from orchestrator.policy.model import Policy, load_policy
from orchestrator.policy.pricing import price_for

STRICT = Path(__file__).resolve().parents[2] / "policies" / "strict.toml"
# The red team's task policy: no hidden or protected paths, ten thousand steps, every price zero.
EVIL = """
[limits]
max_steps = 10000
timeout = 100000.0
memory = "16g"
[budget]
max_input_tokens = 1000000000
max_output_tokens = 1000000000
[budget.prices."claude-sonnet-5-5"]
input = 0.0
output = 0.0
cache_write = 0.0
cache_read = 0.0
[commands]
deny = []
[paths]
hidden = []
protected = []
[sandbox]
user = "4242:4242"
"""


def policy_file(tmp_path: Path, text: str, name: str = "task.toml") -> Policy:
    (tmp_path / name).write_text(text)
    return load_policy(tmp_path / name)


def test_a_task_policy_cannot_loosen_the_operators(tmp_path: Path) -> None:
    operator = load_policy(STRICT)
    effective, held = within(operator, policy_file(tmp_path, EVIL))

    assert effective.limits == operator.limits  # every limit the operator's: 30 steps, 900 s, 1 GiB ...
    assert effective.budget == operator.budget  # 2M input and 100k output tokens, and no zero prices
    assert price_for("claude-sonnet-5-5", effective.budget.prices) == price_for("claude-sonnet-5-5")
    assert set(effective.paths.hidden) == set(operator.paths.hidden) and ".env" in effective.paths.hidden
    assert effective.paths.protected == operator.paths.protected
    assert effective.commands == operator.commands
    assert effective.sandbox.user == "1000:1000"
    assert held == [
        "[budget.prices]: prices come from the operator, not from a task",
        "[limits] memory = 16.0 GiB: kept at the operator's 1.0 GiB",
        "[limits] timeout = 100000.0: kept at the operator's 900.0",
        "[limits] max_steps = 10000: kept at the operator's 30",
        "[budget] max_input_tokens = 1000000000: kept at the operator's 2000000",
        "[budget] max_output_tokens = 1000000000: kept at the operator's 100000",
        "[paths] hidden: the operator's " + ", ".join(operator.paths.hidden) + " added",
        "[sandbox] user = '4242:4242': kept at the operator's '1000:1000'",
    ]  # what the task asked for; what it left at the defaults (protected, deny) is held too, without a word
    assert effective.source == f"{tmp_path / 'task.toml'}, within the operator's {STRICT}"


def test_a_task_policy_may_tighten_and_adds_its_own_rules(tmp_path: Path) -> None:
    tighter = policy_file(
        tmp_path,
        '[limits]\nmax_steps = 5\n[budget]\nmax_output_tokens = 10\n[commands]\nallow = ["pytest", "git status", "curl"]\ndeny = ["git stash"]\n'
        '[paths]\nhidden = ["private/"]\nprotected = ["docs/**"]\n[sandbox]\nruntime = "runsc"\n',
    )
    effective, held = within(load_policy(STRICT), tighter)

    assert effective.limits.max_steps == 5 and effective.budget.max_output_tokens == 10
    assert effective.commands.allow == ["pytest", "git status"]  # curl: not on the operator's list
    assert effective.commands.deny == ["git stash", "git push", "pip* install", "python* -m pip install"]
    assert "private/" in effective.paths.hidden and ".env" in effective.paths.hidden
    assert effective.paths.protected[0] == "docs/**" and "tests/**" in effective.paths.protected
    assert effective.sandbox.runtime == "runsc"
    operator = load_policy(STRICT)
    assert held == [  # a list the task writes replaces the default one, so what it leaves out is said
        f"[paths] hidden: the operator's {', '.join(operator.paths.hidden)} added",
        f"[paths] protected: the operator's {', '.join(operator.paths.protected)} added",
        "[commands] deny: the operator's git push, pip* install, python* -m pip install added",
        "[commands] allow: only what the operator's list allows too (curl not allowed)",
    ]
    assert check_command("curl x", effective.commands.allow, effective.commands.deny) is not None


def test_the_operator_may_let_task_policies_replace_theirs_but_never_the_prices(tmp_path: Path) -> None:
    effective, held = within(load_policy(STRICT), policy_file(tmp_path, EVIL), trust_task=True)
    assert effective.limits.max_steps == 10000 and effective.paths.hidden == []
    assert effective.budget.prices == {} and held == ["[budget.prices]: prices come from the operator, not from a task"]
    assert "in place of the operator's" in effective.source


@pytest.mark.parametrize(
    "operator, task, both",
    [
        (None, None, None),
        (None, ["ls"], ["ls"]),
        (["python", "git"], None, ["python", "git"]),
        (["python", "git"], ["git status", "ls"], ["git status"]),
        (["git status"], ["git"], ["git status"]),
        (["git status"], ["git push"], []),
        (["python3*"], ["python3.11", "pip"], ["python3.11"]),
        (["/usr/bin/python3"], ["python3 -m pytest"], ["python3 -m pytest"]),
        (["python*"], ["py*"], []),  # two different globs: taken not to overlap, on the strict side
    ],
)
def test_an_allow_list_both_permit(operator: list[str] | None, task: list[str] | None, both: list[str] | None) -> None:
    assert allowed_by_both(operator, task) == both
    exact = not (operator and task and "*" in operator[0] + task[0] and operator[0].split()[0] != task[0].split()[0] and "*" in task[0])
    for command in ("ls -l", "git status -s", "git push", "python3.11 x.py", "python3 -m pytest -q", "pip install x"):
        allowed = check_command(command, both, []) is None
        by_each = check_command(command, operator, []) is None and check_command(command, task, []) is None
        assert allowed == by_each if exact else allowed <= by_each, command  # never more than both allow


def tasks_file(root: Path, *entries: dict[str, object]) -> Path:
    path = root / "tasks.jsonl"
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    return path


def test_a_tasks_limits_are_held_within_the_operators_too(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "evil.toml").write_text(EVIL)
    tasks = tasks_file(tmp_path, {"id": "a", "repo": "repo", "task": "x", "max_steps": 10000}, {"id": "b", "repo": "repo", "task": "x", "policy": "evil.toml"})
    loaded = load_tasks(tasks, Defaults(policy=STRICT, max_steps=20, timeout=60.0))

    assert not loaded.problems
    a, b = loaded.tasks
    assert (a.policy.limits.max_steps, a.policy.limits.timeout, b.policy.limits.max_steps) == (20, 60.0, 20)
    assert a.held == ("[limits] max_steps = 10000: kept at the operator's 20",)
    assert b.price == price_for("claude-sonnet-5-5") and b.price is not None and b.price.input > 0
    assert load_policy_text(b.policy.to_toml(), tmp_path) == b.policy  # what the run is given, through policy.toml


def load_policy_text(text: str, folder: Path) -> Policy:
    (folder / "written.toml").write_text(text)
    return load_policy(folder / "written.toml")


def test_local_repos_must_lie_below_the_tasks_file_or_the_repos_root(tmp_path: Path) -> None:
    (tmp_path / "home" / ".ssh").mkdir(parents=True)
    (tmp_path / "batch" / "repos" / "ok").mkdir(parents=True)
    (tmp_path / "batch" / "repos" / "sneaky").symlink_to(tmp_path / "home" / ".ssh")
    entries = [
        {"id": f"t{n}", "repo": repo, "task": "x"} for n, repo in enumerate(["repos/ok", "../home/.ssh", str(tmp_path / "home" / ".ssh"), "repos/sneaky"])
    ]
    tasks = tasks_file(tmp_path / "batch", *entries)

    loaded = load_tasks(tasks, Defaults())
    assert [task.id for task in loaded.tasks] == ["t0"]
    assert len(loaded.problems) == 3
    for line, problem in zip((2, 3, 4), loaded.problems, strict=True):
        assert problem.startswith(f"{tasks}:{line}: repo {tmp_path / 'home' / '.ssh'} is outside {tmp_path / 'batch'}: ")
        assert "must lie below the tasks file's folder (name another with --repos-root)" in problem

    wider = load_tasks(tasks, Defaults(repos_root=tmp_path))
    assert not wider.problems and len(wider.tasks) == 4
    narrower = load_tasks(tasks, Defaults(repos_root=tmp_path / "batch" / "repos" / "ok"))
    assert [task.id for task in narrower.tasks] == ["t0"] and "must lie below --repos-root" in narrower.problems[0]
