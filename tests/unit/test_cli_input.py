"""Bad input to the CLI: one clear line and exit 2 (or 3 for an unreachable engine), before any sandbox starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PROJECT, airlock, airlock_env

STRICT = PROJECT / "policies" / "strict.toml"


def write_policy(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(body)
    return path


@pytest.mark.parametrize(
    ("args", "unset", "message"),
    [
        (["--provider", "gemini"], None, "unknown provider 'gemini': choose one of anthropic, openai"),
        (["--provider", "openai"], None, "--model is required with --provider openai"),
        (["--provider", "openai", "--model", "m"], "OPENAI_API_KEY", "OPENAI_API_KEY is not set"),
        (["--api-key-env", "NO_SUCH_VARIABLE"], None, "NO_SUCH_VARIABLE is not set"),
        (["--context-window", "10"], None, "--context-window"),
        (["--setup", ""], None, "--setup a setup command cannot be empty"),
        (["--setup", "auto", "--setup", "npm ci"], None, '--setup "auto" detects the commands'),
        (["--setup", "auto", "--setup-secret-env", "NO_SUCH_TOKEN"], None, "--setup-secret-env NO_SUCH_TOKEN: the variable is not set"),
        (["--setup", "auto", "--setup-ca", "/nonexistent/ca.pem"], None, "cannot read the setup's CA bundle /nonexistent/ca.pem"),
        (["--setup", "auto", "--setup-ca", "/etc/hostname"], None, "holds no PEM certificate"),
        (["--attempts", "2"], None, "--attempts without --verify needs --pick smallest|first|none"),
        (["--attempts", "2", "--pick", "best"], None, "--pick 'best': choose one of smallest, first, none"),
        (["--pick", "first"], None, "--pick is for several attempts: add --attempts K"),
        (["--attempts", "2", "--verify", "true", "--pick", "first"], None, "--pick is for --attempts without --verify"),
        (["--attempts", "2", "--pick", "first", "--stop-at-first-pass"], None, "--stop-at-first-pass needs --verify"),
    ],
)
def test_bad_provider_options_are_one_line_and_exit_2(calculator_repo: Path, tmp_path: Path, args: list[str], unset: str | None, message: str) -> None:
    env = airlock_env("http://127.0.0.1:9")
    env.pop(unset or "", None)
    proc = airlock("run", str(calculator_repo), "--task", "t", "--out", str(tmp_path / "out"), *args, env=env)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_openai_package_says_how_to_install_it(calculator_repo: Path, tmp_path: Path) -> None:
    """The full CLI, with an import hook that makes `openai` not installed (as without the extra)."""
    hide = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'openai': raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "from orchestrator.cli import main\n"
        "sys.argv = ['airlock'] + sys.argv[1:]\n"
        "main()\n"
    )
    args = ["run", str(calculator_repo), "--task", "t", "--out", str(tmp_path / "out"), "--provider", "openai", "--model", "m"]
    proc = subprocess.run([sys.executable, "-c", hide, *args], capture_output=True, text=True, env=airlock_env(), cwd=PROJECT, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "airlock: error: the openai provider needs the openai package: pip install 'airlock[openai]'"


def test_unreachable_docker_is_a_clear_exit_3(calculator_repo: Path, tmp_path: Path) -> None:
    env = airlock_env("http://127.0.0.1:9", DOCKER_HOST="unix:///nonexistent/docker.sock")
    proc = airlock("run", str(calculator_repo), "--task", "x", "--out", str(tmp_path / "out"), env=env)
    assert proc.returncode == 3
    assert "Docker" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--git-history", "0"], "--git-history must be full, recent, none or a number of commits (1 or more), not 0"),
        (["--git-history", "some"], "--git-history must be full, recent, none or a number of commits (1 or more), not 'some'"),
        (["--memory", "1g", "--disk", "2g"], "the workspace (disk 2 GiB) counts toward the memory limit (memory 1 GiB) and must leave 256 MiB"),
    ],
)
def test_bad_sandbox_options_are_refused_before_anything_starts(calculator_repo: Path, tmp_path: Path, args: list[str], message: str) -> None:
    proc = airlock("run", str(calculator_repo), "--task", "x", "--out", str(tmp_path / "out"), *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_cost_budget_for_a_model_without_a_price_is_refused_up_front(calculator_repo: Path, tmp_path: Path) -> None:
    policy = write_policy(tmp_path, "[budget]\nmax_cost_usd = 1.0\n")
    proc = airlock("run", str(calculator_repo), "--task", "x", "--model", "unpriced-model", "--policy", str(policy), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "no price for model 'unpriced-model'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[limits]\ncpus = 1\nmemory = "4x"\n', ":3: [limits] memory"),
        ('[limits]\ncpus = 1\n\n[network]\nmode = "bridge"\n', ":5: [network] mode"),
        ("[limits\ncpus = 1\n", ":1: invalid TOML"),
    ],
)
def test_malformed_policy_is_rejected_with_its_line(calculator_repo: Path, tmp_path: Path, body: str, message: str) -> None:
    policy = write_policy(tmp_path, body)
    proc = airlock("run", str(calculator_repo), "--task", "x", "--policy", str(policy), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert f"{policy}{message}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    check = airlock("policy", "check", str(policy))
    assert check.returncode == 2 and message in check.stderr


def test_policy_check_lists_every_problem_in_file_order(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, '[limits]\ncpus = "two"\nmemorry = "4g"\n\n[sandbox]\ngit_history = 0\nuser = "0:0"\n')
    check = airlock("policy", "check", str(policy))
    assert check.returncode == 2
    assert check.stderr.splitlines() == [
        f"{policy}:2: [limits] cpus: must be a number, not 'two'",
        f"{policy}:3: [limits] memorry: unknown key (did you mean 'memory'?)",
        f"{policy}:6: [sandbox] git_history: must be full, recent, none or a number of commits (1 or more), not 0",
        f"{policy}:7: [sandbox] user: '0:0' is root: the sandbox never runs as root, choose a non-zero uid",
        f"airlock: error: 4 problems in {policy}",
    ]


def test_shipped_policies_check_and_show() -> None:
    for name in ("default", "strict", "ci"):
        proc = airlock("policy", "check", str(PROJECT / "policies" / f"{name}.toml"))
        assert proc.returncode == 0, proc.stderr
    shown = airlock("policy", "show", str(STRICT))
    assert shown.returncode == 0 and "allow = [" in shown.stdout and "tests/**" in shown.stdout


def test_policy_check_warns_when_a_policy_cannot_apply_to_the_model() -> None:
    ci = str(PROJECT / "policies" / "ci.toml")
    local = airlock("policy", "check", ci, "--model", "qwen2.5-coder-7b")
    assert local.returncode == 0 and local.stdout.strip() == f"{ci}: ok (1 warning)"
    assert "max_cost_usd cannot apply to model 'qwen2.5-coder-7b'" in local.stderr and "state the budget in tokens" in local.stderr
    unnamed = airlock("policy", "check", ci)
    assert unnamed.returncode == 0 and "applies only to models with a known price" in unnamed.stderr
    claude = airlock("policy", "check", ci, "--model", "claude-sonnet-5-5")
    assert claude.returncode == 0 and claude.stderr == "" and claude.stdout.strip() == f"{ci}: ok"
    strict = airlock("policy", "check", str(STRICT), "--model", "qwen2.5-coder-7b")  # budgets in tokens: fine for any model
    assert strict.returncode == 0 and strict.stderr == ""


def test_policy_check_warns_about_a_reply_limit_over_a_quarter_of_the_window(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, "[limits]\ncontext_window = 8192\nmax_reply_tokens = 4096\n")
    proc = airlock("policy", "check", str(policy))
    assert proc.returncode == 0 and "replies are limited to 2048 tokens" in proc.stderr


def test_missing_kubernetes_package_says_how_to_install_it(calculator_repo: Path, tmp_path: Path) -> None:
    hide = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'kubernetes': raise ModuleNotFoundError(name, name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "from orchestrator.cli import main\n"
        "sys.argv = ['airlock'] + sys.argv[1:]\n"
        "main()\n"
    )
    for args in (["gc", "--backend", "kubernetes"], ["run", str(calculator_repo), "--task", "t", "--out", str(tmp_path / "out"), "--backend", "kubernetes"]):
        proc = subprocess.run([sys.executable, "-c", hide, *args], capture_output=True, text=True, env=airlock_env(), cwd=PROJECT, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == "airlock: error: --backend kubernetes needs the kubernetes package: pip install 'airlock[kubernetes]'"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "REPO", "--task", "t", "--namespace", "ns"], "--namespace is for --backend kubernetes"),
        (["batch", "TASKS", "--out", "OUT", "--engine", "builder-2"], "--engine 'builder-2': give a Docker engine address"),
        (["batch", "TASKS", "--out", "OUT", "--backend", "kubernetes", "--engine", "ssh://b"], "with --backend kubernetes use --namespace"),
        (["gc", "--namespace", "ns"], "--namespace is for --backend kubernetes"),
        (["run", "REPO", "--task", "t", "--backend", "podman"], "unknown sandbox backend 'podman'"),
    ],
)
def test_bad_placement_options_are_one_line_and_exit_2(calculator_repo: Path, tmp_path: Path, args: list[str], message: str) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"repo": "calculator", "task": "t"}\n')
    replaced = {"REPO": str(calculator_repo), "TASKS": str(tasks), "OUT": str(tmp_path / "out")}
    proc = airlock(*[replaced.get(arg, arg) for arg in args], env=airlock_env("http://127.0.0.1:9", DOCKER_HOST="unix:///nonexistent/docker.sock"))
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_an_ssh_engine_without_paramiko_says_how_to_install_it(calculator_repo: Path, tmp_path: Path) -> None:
    hide = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'paramiko': raise ModuleNotFoundError(name, name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "from orchestrator.cli import main\n"
        "sys.argv = ['airlock'] + sys.argv[1:]\n"
        "main()\n"
    )
    env = airlock_env("http://127.0.0.1:9", DOCKER_HOST="ssh://builder-2")
    proc = subprocess.run([sys.executable, "-c", hide, "gc"], capture_output=True, text=True, env=env, cwd=PROJECT, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == "airlock: error: ssh://builder-2: ssh:// engines need paramiko: pip install 'airlock[ssh]'"


def test_help_is_laid_out_for_a_log_when_stdout_is_not_a_terminal() -> None:
    """Captured (a CI log) and without COLUMNS: wide, nothing cut short with an ellipsis; COLUMNS is still obeyed.
    Each call is forked from a server that imported the CLI under another environment: the layout is the
    process's own, chosen as it starts."""
    env = {key: value for key, value in airlock_env().items() if key not in ("COLUMNS", "TERMINAL_WIDTH")}
    for command in (["--help"], ["run", "--help"], ["batch", "--help"], ["replay", "--help"], ["review", "--help"]):
        shown = airlock(*command, env=env)
        assert shown.returncode == 0 and "…" not in shown.stdout, shown.stdout
        assert "ANTHROPIC_API_KEY or OPENAI_API_KEY" in shown.stdout or command != ["batch", "--help"]
    narrow = airlock("batch", "--help", env={**env, "COLUMNS": "60"})
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 60
