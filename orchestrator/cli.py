"""The `airlock` command line. Every failure ends with one clear line and a documented exit code.

Exit codes: 0 completed; 1 the agent stopped without success (for `replay`: the replay diverged);
2 bad usage or input; 3 sandbox or Docker error; 4 model API error; 130 interrupted.
"""

from __future__ import annotations

import atexit
import io
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TextIO

import typer
from rich.console import Console
from rich.syntax import Syntax

from orchestrator.errors import AirlockError, UsageError
from orchestrator.providers import DEFAULT_MODEL, DEFAULT_PROVIDER, PROVIDERS, TAKES_TEMPERATURE, check_provider, make_provider, resolve_api_key
from orchestrator.providers.base import Provider
from orchestrator.run.config import RunConfig, check_out_dir, check_repo, new_run_id, read_task
from orchestrator.run.record import AttemptOf, RunRecord, VerifyRecord
from orchestrator.sandbox.backends import BACKENDS, DEFAULT_BACKEND, check_backend, get_backend
from orchestrator.sandbox.spec import DEFAULT_IMAGE
from orchestrator.sizes import plural
from orchestrator.terminal import safe

if TYPE_CHECKING:
    from orchestrator.run.checkpoint import Continuation

app = typer.Typer(
    name="airlock",
    help="Run a coding agent on a repo inside a hardened, network-less Docker sandbox; get the change back as a patch.",
    add_completion=False,
    pretty_exceptions_enable=False,
)
image_app = typer.Typer(help="Build the sandbox image.")
app.add_typer(image_app, name="image")
policy_app = typer.Typer(help="Show and check policy files.")
app.add_typer(policy_app, name="policy")
env_app = typer.Typer(help="Environment images made by setup phases: list, remove, prune.")
app.add_typer(env_app, name="env")

# Not a terminal and no COLUMNS (a CI log): lay out this wide, so no table or help text is cropped, and
# never wrap lines. On a terminal, or with COLUMNS set, that width is used.
LOG_WIDTH = 200


class _UntilClosed(io.TextIOBase):
    """stdout until its reader goes away (`airlock run ... | head`); after that, output is dropped, so a
    closed pipe never stops a run half-way: it still exports its patch and closes its record."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            self._stream.write(text)
        except BrokenPipeError:
            self._drop()
        return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._drop()

    def _drop(self) -> None:
        """From now on fd 1 is /dev/null: also what Python flushes at exit goes there, without a complaint."""
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, self._stream.fileno())
        os.close(null)

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._stream.encoding


def _console(stream: TextIO) -> Console:
    log = not stream.isatty()
    width = LOG_WIDTH if log and not os.environ.get("COLUMNS") else None
    return Console(file=_UntilClosed(stream), highlight=False, soft_wrap=log or stream is sys.stderr, width=width)  # type: ignore[arg-type]


console = _console(sys.stdout)
err_console = _console(sys.stderr)


def _lay_out() -> None:
    """Choose the layout for this process's stdout, stderr and COLUMNS as it starts, not as this module is
    imported: a run forked from a launcher (orchestrator.batch.launcher) imported it under another's."""
    global console, err_console
    os.environ.setdefault("TERMINAL_WIDTH", str(LOG_WIDTH) if not (sys.stdout.isatty() or os.environ.get("COLUMNS")) else "")
    console = _console(sys.stdout)
    err_console = _console(sys.stderr)


def _help_without_command(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        console.print(ctx.get_help())


for _group in (app, image_app, policy_app, env_app):
    _group.callback(invoke_without_command=True)(_help_without_command)


@app.command()
def run(
    repo: Annotated[Path, typer.Argument(help="The repository folder to work on (never modified).")],
    task: Annotated[str | None, typer.Option(help="What the agent should do.")] = None,
    task_file: Annotated[Path | None, typer.Option(help="Read the task from this file.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: ./airlock-runs/<run-id>).")] = None,
    provider: Annotated[str, typer.Option(help=f"Model API: {' or '.join(PROVIDERS)} (any OpenAI-compatible chat-completions server).")] = DEFAULT_PROVIDER,
    model: Annotated[str | None, typer.Option(help=f"Model name (default for anthropic: {DEFAULT_MODEL}; required for openai).")] = None,
    base_url: Annotated[str | None, typer.Option(help="API base URL, e.g. http://localhost:8000/v1 for a vLLM server (default: the SDK's).")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="Environment variable holding the API key (default: ANTHROPIC_API_KEY or OPENAI_API_KEY).")] = None,
    policy: Annotated[Path | None, typer.Option(help="Policy file (TOML); flags below override it (default: built-in defaults).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Most model requests before the run stops (default: 50).")] = None,
    command_timeout: Annotated[float | None, typer.Option(help="Seconds before one shell command is killed (default: 120).")] = None,
    timeout: Annotated[float | None, typer.Option(help="Wall-clock limit of the whole run, in seconds (default: 3600).")] = None,
    context_window: Annotated[
        int | None, typer.Option(help="The model's context window in tokens; old tool results are stubbed out near it (default: the model's).")
    ] = None,
    max_reply_tokens: Annotated[
        int | None, typer.Option(help="Most tokens of one model reply, sent to the server (default: 16000 for anthropic, 4096 for openai).")
    ] = None,
    text_tool_calls: Annotated[bool, typer.Option(help="Read tool calls a model writes as text when the server returns none (openai provider).")] = True,
    cpus: Annotated[float | None, typer.Option(help="CPU limit of the sandbox (default: 2).")] = None,
    memory: Annotated[str | None, typer.Option(help="Memory limit of the sandbox, no swap (default: 4g).")] = None,
    disk: Annotated[str | None, typer.Option(help="Size of the sandbox workspace; counts toward memory (default: 2g).")] = None,
    pids: Annotated[int | None, typer.Option(help="Most processes in the sandbox (default: 512).")] = None,
    image: Annotated[str | None, typer.Option(help="Sandbox image (default: airlock-sandbox:latest).")] = None,
    runtime: Annotated[
        str | None, typer.Option(help="Container runtime: runc, or runsc for gVisor's own kernel, if registered with Docker (default: runc).")
    ] = None,
    git_history: Annotated[
        str | None, typer.Option(metavar="full|recent|none|N", help="Git history in the sandbox: recent = the last 50 commits (default), or N of them.")
    ] = None,
    verify: Annotated[str | None, typer.Option(help="Command run in the sandbox after the agent stops; its exit status decides success.")] = None,
    backend: Annotated[str, typer.Option(help=f"Where the sandbox runs: {', '.join(BACKENDS)} (Docker: the engine DOCKER_HOST names).")] = DEFAULT_BACKEND,
    namespace: Annotated[str | None, typer.Option(help="Kubernetes namespace of the sandbox pod (default: the kubeconfig context's).")] = None,
    setup: Annotated[
        list[str] | None,
        typer.Option(
            metavar="CMD",
            help="Setup command run before the agent, with egress to the allowlist only; repeatable; 'auto' detects them, 'none' turns a policy's off.",
        ),
    ] = None,
    rebuild_env: Annotated[bool, typer.Option(help="Run the setup even if an environment with the same key is cached.")] = False,
    setup_secret_env: Annotated[
        list[str] | None,
        typer.Option(metavar="VAR", help="Pass this environment variable to the setup commands only (e.g. a private index token); repeatable."),
    ] = None,
    setup_secret: Annotated[
        list[str] | None,
        typer.Option(
            metavar="HOST=VAR",
            help="The egress proxy adds VAR's value (user:password, or a token) as the Authorization of plain-http requests to HOST[:PORT]; "
            "the setup's code never sees it; repeatable.",
        ),
    ] = None,
    setup_ca: Annotated[Path | None, typer.Option(help="PEM file of CA certificates the setup trusts instead of the host's own bundle.")] = None,
    attempts: Annotated[
        int, typer.Option(min=1, help="Independent attempts at the task, each in its own sandbox; the chosen one's patch is the run's (see --pick).")
    ] = 1,
    pick: Annotated[
        str | None,
        typer.Option(
            metavar="smallest|first|none",
            help="Without --verify, how --attempts chooses: the smallest patch, the first to complete, or none (with --verify: the passing, smallest).",
        ),
    ] = None,
    stop_at_first_pass: Annotated[bool, typer.Option(help="With --attempts and --verify: stop the other attempts once one passed verify.")] = False,
    jobs: Annotated[int | None, typer.Option(min=1, help="With --attempts: how many run at once (default: all).")] = None,
    # Set by `airlock batch` for its child runs: the batch's cost budget and its shared 429 backoff; and by --attempts.
    stop_file: Annotated[Path | None, typer.Option(hidden=True)] = None,
    rate_limit_file: Annotated[Path | None, typer.Option(hidden=True)] = None,
    attempt: Annotated[int | None, typer.Option(hidden=True)] = None,
) -> None:
    """Run one task on one repo in a fresh sandbox and export the change to OUT/patch.diff."""
    from orchestrator.policy.model import load_policy
    from orchestrator.run.setup import read_ca_bundle, read_credentials, read_secrets

    rule = _attempts_rule(attempts, verify, pick, stop_at_first_pass, jobs, attempt)
    model = _model_name(provider, model)
    overrides: dict[str, object] = dict(
        max_steps=max_steps, command_timeout=command_timeout, timeout=timeout, context_window=context_window,
        max_reply_tokens=max_reply_tokens, cpus=cpus, memory=memory, disk=disk, pids=pids, image=image, runtime=runtime,
        git_history=git_history, setup_ca_bundle=str(setup_ca.resolve()) if setup_ca else None,
        setup_commands=[] if setup == ["none"] else setup,
    )  # fmt: skip
    loaded = load_policy(policy)
    if setup_secret:
        overrides["setup_credentials"] = loaded.setup.credentials | _credential_flags(setup_secret)
    effective = loaded.with_overrides(**overrides)
    read_ca_bundle(effective.setup.ca_bundle)
    read_credentials(effective.setup)
    secrets = read_secrets(setup_secret_env or [])
    api_key = resolve_api_key(provider, api_key_env)
    run_id = new_run_id()
    config = RunConfig(
        repo=check_repo(repo),
        task=read_task(task, task_file),
        out=check_out_dir(out or Path("airlock-runs") / run_id),
        run_id=run_id,
        model=model,
        policy=effective,
        verify=verify,
        stop_file=stop_file,
        backend=check_backend(backend),
        rebuild_env=rebuild_env,
        setup_secrets=secrets,
        location=_location(backend, namespace),
        attempt=_attempt_of(attempt, attempts, TAKES_TEMPERATURE[provider]),
    )
    if rule is not None:
        _run_attempts(config, provider, attempts, jobs or attempts, rule, stop_at_first_pass, rate_limit_file)
    adapter = make_provider(provider, model, api_key=api_key, base_url=base_url, rate_limit_file=rate_limit_file, text_tool_calls=text_tool_calls)
    record = _execute(config, adapter)
    _print_outputs(config.out)
    raise typer.Exit(record.exit_code)


def _attempts_rule(attempts: int, verify: str | None, pick: str | None, stop_at_first_pass: bool, jobs: int | None, attempt: int | None) -> str | None:
    """How --attempts chooses (verify, or --pick's); None for a single run (or one attempt of several, run by --attempts)."""
    if attempts == 1 or attempt is not None:
        given = [name for name, value in (("--pick", pick), ("--stop-at-first-pass", stop_at_first_pass), ("--jobs", jobs)) if value]
        if given and attempt is None:
            raise UsageError(f"{given[0]} is for several attempts: add --attempts K")
        if attempt is not None and not 1 <= attempt <= attempts:
            raise UsageError(f"--attempt {attempt} is not one of --attempts {attempts}")
        return None
    from orchestrator.batch.attempts import PICKS  # only now: a single run never imports the attempts' machinery

    if pick is not None and pick not in PICKS:
        raise UsageError(f"--pick {pick!r}: choose one of {', '.join(PICKS)}")
    if verify is not None:
        if pick is not None:
            raise UsageError("--pick is for --attempts without --verify: with --verify, an attempt whose verify passed is chosen")
        return "verify"
    if stop_at_first_pass:
        raise UsageError("--stop-at-first-pass needs --verify: it stops the others once one attempt's verify passed")
    if pick is None:
        raise UsageError("--attempts without --verify needs --pick smallest|first|none: nothing else can tell the attempts apart")
    return pick


def _attempt_of(attempt: int | None, attempts: int, sampled: bool) -> AttemptOf | None:
    if attempt is None:
        return None
    from orchestrator.batch.attempts import temperatures

    return AttemptOf(number=attempt, of=attempts, temperature=temperatures(attempts, sampled)[attempt - 1])


def _run_attempts(
    config: RunConfig, provider: str, attempts: int, jobs: int, rule: str, stop_at_first_pass: bool, rate_limit_file: Path | None
) -> NoReturn:  # fmt: skip
    """Run the attempts, each `airlock run` with this command line plus its own --out and number, and choose."""
    from orchestrator.batch.attempts import Attempts, Coordinated
    from orchestrator.policy.guard import PolicyGuard

    guard = PolicyGuard(config.policy, config.model)  # the budget of all attempts together (and no price: exit 2 now)
    batch = Coordinated(config.stop_file, rate_limit_file)
    provisional = RunRecord(
        run_id=config.run_id, repo=str(config.repo), task=config.task, model=config.model, provider=provider,
        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), policy=config.policy.to_record(),
        verify=VerifyRecord(command=config.verify) if config.verify else None,
    )  # fmt: skip
    sampled = TAKES_TEMPERATURE[provider]
    code = Attempts(sys.argv[1:], config.out, attempts, jobs, rule, stop_at_first_pass, guard, console, sampled, batch).run(provisional)
    if (config.out / "run.json").exists():
        _print_outputs(config.out)
    raise typer.Exit(code)


def _location(backend: str, namespace: str | None) -> str | None:
    """Where the backend places boxes: the Kubernetes namespace; a Docker engine comes from DOCKER_HOST."""
    if namespace is not None and check_backend(backend) != "kubernetes":
        raise UsageError("--namespace is for --backend kubernetes")
    return namespace


def _credential_flags(values: list[str]) -> dict[str, str]:
    """--setup-secret HOST=VAR, as the policy's [setup] credentials (checked there)."""
    found = {}
    for value in values:
        target, sep, variable = value.partition("=")
        if not sep or not target or not variable:
            raise UsageError(f"--setup-secret {value!r}: give HOST=VAR (the host, and the variable holding its credential)")
        found[target] = variable
    return found


def _model_name(provider: str, model: str | None) -> str:
    """The model to ask; checks the provider first (its SDK installed) so that error comes before any other."""
    check_provider(provider)
    if model is None and provider != DEFAULT_PROVIDER:
        raise UsageError(f"--model is required with --provider {provider} (the name the server knows the model by)")
    return model or DEFAULT_MODEL


def _execute(
    config: RunConfig, provider: Provider, banner: str | Callable[[RunRecord], str] | None = None, continuation: Continuation | None = None
) -> RunRecord:  # fmt: skip
    from orchestrator.run.runner import Run

    run = Run(config, provider, console, continuation=continuation)
    return run.execute(banner(run.record) if callable(banner) else banner)


def _print_outputs(out: Path) -> None:
    console.print(f"outputs: {out / 'patch.diff'} · {out / 'run.json'} · {out / 'trajectory.jsonl'}", markup=False)


@app.command()
def replay(
    run_dir: Annotated[Path, typer.Argument(metavar="DIR", help="A recorded run's folder (run.json, trajectory.jsonl, patch.diff).")],
    out: Annotated[Path | None, typer.Option(help="Output folder of the replay (default: ./airlock-runs/replay-<run-id>).")] = None,
    repo: Annotated[Path | None, typer.Option(help="Replay against this repo instead of the recorded one (e.g. when it has moved).")] = None,
    ignore_regex: Annotated[
        list[str] | None,
        typer.Option(metavar="PATTERN", help="Replace matches of this regex in tool outputs before comparing, repeatable (e.g. 'in [0-9.]+s')."),
    ] = None,
) -> None:
    """Re-run a recorded run with its recorded model responses in a fresh sandbox; report where tool results and the patch diverge.

    Exit 0 if the patch is byte-identical, no tool result diverged and the status is the same; 1 otherwise."""
    from orchestrator.run.replay import replay as replay_run

    raise typer.Exit(replay_run(run_dir, out, repo, ignore_regex or [], console))


@app.command()
def resume(
    run_dir: Annotated[Path, typer.Argument(metavar="DIR", help="The folder of a run cut short (killed, Ctrl-C, the host went down).")],
    base_url: Annotated[str | None, typer.Option(help="API base URL (default: the SDK's, as for `airlock run`).")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="Environment variable holding the API key (default: the provider's).")] = None,
    repo: Annotated[Path | None, typer.Option(help="The repo, when it has moved since the run (it must hold the same files).")] = None,
    stop_file: Annotated[Path | None, typer.Option(hidden=True)] = None,
    rate_limit_file: Annotated[Path | None, typer.Option(hidden=True)] = None,
) -> None:
    """Continue a run cut short, in its own folder: its recorded steps are replayed into a new sandbox without
    model requests (each tool result must match the recording), then it goes on live with the budget left."""
    from orchestrator.run.resume import prepare_resume, read_run, resumed_banner

    recorded = read_run(run_dir)
    model = make_provider(
        check_provider(recorded.provider), str(recorded.run["model"]), api_key=resolve_api_key(recorded.provider, api_key_env), base_url=base_url,
        rate_limit_file=rate_limit_file, text_tool_calls=recorded.text_tool_calls,
    )  # fmt: skip
    config, continuation = prepare_resume(recorded, repo)
    config = replace(config, stop_file=stop_file)
    record = _execute(config, model, continuation=continuation, banner=resumed_banner)
    _print_outputs(config.out)
    raise typer.Exit(record.exit_code)


@app.command()
def fork(
    run_dir: Annotated[Path, typer.Argument(metavar="DIR", help="A recorded run's folder.")],
    at_step: Annotated[int, typer.Option(help="Replay the run's first N steps, then go on live from there.")],
    out: Annotated[Path | None, typer.Option(help="Output folder of the new run (default: ./airlock-runs/fork-<run-id>).")] = None,
    task: Annotated[str | None, typer.Option(help="What the model is told after step N (default: nothing new; it goes on).")] = None,
    base_url: Annotated[str | None, typer.Option(help="API base URL (default: the SDK's, as for `airlock run`).")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="Environment variable holding the API key (default: the provider's).")] = None,
    repo: Annotated[Path | None, typer.Option(help="The repo, when it has moved since the run (it must hold the same files).")] = None,
) -> None:
    """Start a new run from the state after step N of a recorded one (replayed, no model requests), optionally with new instructions."""
    from orchestrator.run.resume import forked_banner, prepare_fork, read_run

    recorded = read_run(run_dir)
    if task is not None and not task.strip():
        raise UsageError("--task is empty: say what the model should do from that step on, or leave --task out")
    model = make_provider(
        check_provider(recorded.provider), str(recorded.run["model"]), api_key=resolve_api_key(recorded.provider, api_key_env), base_url=base_url,
        text_tool_calls=recorded.text_tool_calls,
    )  # fmt: skip
    config, continuation = prepare_fork(recorded, at_step, out, task.strip() if task else None, repo)
    record = _execute(config, model, continuation=continuation, banner=lambda r: forked_banner(r.forked_from or {}, continuation.replay.last))
    _print_outputs(config.out)
    raise typer.Exit(record.exit_code)


@app.command()
def batch(
    tasks: Annotated[Path, typer.Argument(help="Tasks: JSON Lines (.jsonl), YAML (.yaml/.yml), or a plain list of repos (one a line, with --task).")],
    out: Annotated[Path, typer.Option(help="Results folder: OUT/<id>/ per task, summary.json, predictions.jsonl. Re-running resumes.")],
    jobs: Annotated[int, typer.Option(min=1, help="Tasks running at once on each engine, each in its own sandbox.")] = 2,
    task: Annotated[str | None, typer.Option(help="The task for every repo of a plain or YAML list, and for entries without one.")] = None,
    provider: Annotated[str, typer.Option(help=f"Model API of every task: {' or '.join(PROVIDERS)}.")] = DEFAULT_PROVIDER,
    model: Annotated[str | None, typer.Option(help=f"Model for tasks that do not name one (default for anthropic: {DEFAULT_MODEL}).")] = None,
    base_url: Annotated[str | None, typer.Option(help="API base URL of every task (default: the SDK's).")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="Environment variable holding the API key (default: ANTHROPIC_API_KEY or OPENAI_API_KEY).")] = None,
    text_tool_calls: Annotated[bool, typer.Option(help="Read tool calls a model writes as text when the server returns none (openai provider).")] = True,
    policy: Annotated[
        Path | None, typer.Option(help="The operator's policy: every task's, and a ceiling a task's own policy can only tighten (default: built-in).")
    ] = None,
    trust_task_policies: Annotated[
        bool, typer.Option(help="Let a task's own policy replace --policy, loosening it too (prices still come from the operator).")
    ] = False,
    repos_root: Annotated[
        Path | None, typer.Option(help="Local repos named in the tasks file must lie below this folder (default: the tasks file's folder).")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Most model requests per task (a task may ask for fewer).")] = None,
    timeout: Annotated[float | None, typer.Option(help="Wall-clock limit per task in seconds (a task may ask for less).")] = None,
    image: Annotated[str | None, typer.Option(help="Sandbox image for tasks that do not name one.")] = None,
    verify: Annotated[str | None, typer.Option(help="Verify command for tasks that do not give one.")] = None,
    attempts: Annotated[
        int, typer.Option(min=1, help="Attempts at each task that does not say (`attempts`), within --jobs; the chosen one's patch is the task's.")
    ] = 1,
    pick: Annotated[str | None, typer.Option(help="How attempts without a verify command are chosen: smallest, first or none.")] = None,
    max_total_cost: Annotated[float | None, typer.Option(help="USD for the batch: once spent, nothing new starts, running tasks stop.")] = None,
    redo: Annotated[bool, typer.Option(help="Run every task again, even those that finished earlier.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume/--restart", help="Unfinished tasks of an earlier invocation go on from their recorded steps, or start over.")
    ] = True,
    skip_invalid: Annotated[bool, typer.Option(help="Run the valid tasks even if some entries are invalid.")] = False,
    cache: Annotated[Path | None, typer.Option(help="Where git URLs are cloned (default: OUT/.cache/repos).")] = None,
    allow_protocol: Annotated[list[str] | None, typer.Option(help="Git protocol allowed for cloning, repeatable (default: https only).")] = None,
    setup: Annotated[
        list[str] | None, typer.Option(metavar="CMD", help="Setup command of tasks without their own `setup`, repeatable ('auto' detects).")
    ] = None,
    backend: Annotated[str, typer.Option(help=f"Where the sandboxes run: {', '.join(BACKENDS)}.")] = DEFAULT_BACKEND,
    engine: Annotated[
        list[str] | None,
        typer.Option(
            metavar="URL[=N]",
            help="A Docker engine to spread the tasks over (unix://, tcp:// or ssh://), repeatable; at most N tasks there at once "
            "(default: --jobs). Default: the engine DOCKER_HOST names.",
        ),
    ] = None,
    namespace: Annotated[str | None, typer.Option(help="Kubernetes namespace of the sandbox pods (default: the kubeconfig context's).")] = None,
) -> None:
    """Run many tasks (repos x task) in parallel sandboxes, resumable, with a live board and a summary."""
    from orchestrator.batch.placement import parse_engines
    from orchestrator.batch.scheduler import BatchOptions, check_protocols, run_batch
    from orchestrator.batch.tasks import Defaults

    if max_total_cost is not None and not max_total_cost > 0:
        raise UsageError(f"--max-total-cost must be more than 0, not {max_total_cost:g}")
    if timeout is not None and not timeout > 0:
        raise UsageError(f"--timeout must be more than 0, not {timeout:g}")
    if pick is not None:
        from orchestrator.batch.attempts import PICKS

        if pick not in PICKS:
            raise UsageError(f"--pick {pick!r}: choose one of {', '.join(PICKS)}")
    protocols = check_protocols(allow_protocol or ["https"])
    engines = tuple(parse_engines(backend, engine or [], namespace, jobs))
    model = _model_name(provider, model)
    resolve_api_key(provider, api_key_env)  # fail the whole batch up front, not every task alike
    access = ["--provider", provider, *(["--base-url", base_url] if base_url else []), *(["--api-key-env", api_key_env] if api_key_env else [])]
    access += [] if text_tool_calls else ["--no-text-tool-calls"]
    defaults = Defaults(
        task=task, verify=verify, model=model, max_steps=max_steps, timeout=timeout, image=image, model_access=tuple(access),
        policy=policy.resolve() if policy else None, allowed_protocols=protocols, needs_price=max_total_cost is not None,
        repos_root=_folder(repos_root, "--repos-root") if repos_root else None, trust_task_policies=trust_task_policies,
        setup=tuple(setup or ()), attempts=attempts, pick=pick,
    )  # fmt: skip
    options = BatchOptions(
        out=out.resolve(),
        jobs=jobs,
        max_total_cost=max_total_cost,
        redo=redo,
        resume=resume,
        cache=cache.resolve() if cache else None,
        allowed_protocols=protocols,
        engines=engines,
    )
    raise typer.Exit(run_batch(tasks, defaults, options, skip_invalid=skip_invalid, console=console, err_console=err_console))


def _folder(path: Path, option: str) -> Path:
    if not path.is_dir():
        raise UsageError(f"{option} must be an existing folder: {path}")
    return path.resolve()


@app.command()
def demo(
    out: Annotated[Path | None, typer.Option(help="Output folder (default: ./airlock-runs/demo-<run-id>).")] = None,
) -> None:
    """Fix the bundled calculator exercise: with Claude if ANTHROPIC_API_KEY is set, else with a scripted demo model."""
    from orchestrator.demo import CALCULATOR_REPO, CALCULATOR_TASK, TEST_COMMAND, calculator_script
    from orchestrator.policy.model import load_policy
    from orchestrator.providers.scripted import ScriptedModelServer

    run_id = new_run_id()
    config = RunConfig(
        repo=CALCULATOR_REPO, task=CALCULATOR_TASK, out=check_out_dir(out or Path("airlock-runs") / f"demo-{run_id}"),
        run_id=run_id, model=DEFAULT_MODEL, policy=load_policy(None).with_overrides(max_steps=20), verify=TEST_COMMAND,
    )  # fmt: skip
    if os.environ.get("ANTHROPIC_API_KEY"):
        record = _execute(config, make_provider("anthropic", config.model, api_key=None))
    else:
        with ScriptedModelServer(calculator_script()) as api:
            scripted = make_provider("anthropic", "airlock-demo-script", api_key="demo-no-key", base_url=api.base_url)
            banner = "DEMO MODEL: scripted replies served locally, no API key, no API calls (set ANTHROPIC_API_KEY to use Claude)"
            record = _execute(RunConfig(**{**vars(config), "model": scripted.model}), scripted, banner)
    patch = (config.out / "patch.diff").read_text(encoding="utf-8", errors="replace")
    console.rule(f"patch.diff ({config.out / 'patch.diff'})")
    console.print(Syntax(safe(patch).plain, "diff", theme="ansi_dark", word_wrap=True) if patch else "(empty patch)")
    console.print(f"apply it to a copy with: airlock apply {config.out / 'patch.diff'} --repo <copy of {CALCULATOR_REPO}>")
    raise typer.Exit(record.exit_code)


@app.command()
def apply(
    patch: Annotated[Path, typer.Argument(help="A patch.diff written by airlock, or a run's folder (its patch.diff is applied).")],
    repo: Annotated[Path, typer.Option(help="The repository to apply it to.")],
    allow_dirty: Annotated[bool, typer.Option(help="Apply even if the repo has uncommitted changes.")] = False,
    check: Annotated[bool, typer.Option(help="Only check that the patch applies cleanly.")] = False,
) -> None:
    """Apply a patch with `git apply` under a neutral git configuration (the repo's hooks and config never run)."""
    from orchestrator.patch.apply import apply_patch

    result = apply_patch(patch, repo, allow_dirty=allow_dirty, check_only=check)
    console.print(safe(result.message))


@app.command()
def doctor(
    image: Annotated[str | None, typer.Option(help="Sandbox image to check.")] = None,
    backend: Annotated[str, typer.Option(help=f"The backend to check: {', '.join(BACKENDS)} (Docker: the engine DOCKER_HOST names).")] = DEFAULT_BACKEND,
    namespace: Annotated[str | None, typer.Option(help="Kubernetes namespace (default: the kubeconfig context's).")] = None,
) -> None:
    """Check the Docker daemon (or the Kubernetes cluster), runc, the sandbox image, gVisor, the API key and the openai provider, and say what to do about each."""
    from orchestrator.doctor import render, run_checks

    location = _location(backend, namespace)
    if backend == "kubernetes":
        from orchestrator.doctor_kubernetes import run_checks as kubernetes_checks

        checks = kubernetes_checks(image or DEFAULT_IMAGE, location)
    else:
        checks = run_checks(image or DEFAULT_IMAGE)
    render(checks, console)
    raise typer.Exit(0 if all(check.ok or not check.required for check in checks) else 1)


@image_app.command("build")
def image_build(
    tag: Annotated[str | None, typer.Option(help="Image tag (default: airlock-sandbox:latest).")] = None,
    base: Annotated[str, typer.Option(help="auto, registry (FROM debian:bookworm-slim) or debian-packages (mmdebstrap, no registry).")] = "auto",
    rebuild: Annotated[bool, typer.Option(help="Build even if an up-to-date image exists.")] = False,
) -> None:
    """Build the sandbox image; works with no container registry by building the base from Debian packages."""
    from orchestrator.sandbox.image import build_image

    built = build_image(tag or DEFAULT_IMAGE, base=base, rebuild=rebuild, log=lambda line: console.print(safe(line, "dim")))
    console.print(f"sandbox image {built.tag}: " + (f"built in {built.seconds:.0f} s" if built.built else "up to date"))


@policy_app.command("show")
def policy_show(file: Annotated[Path | None, typer.Argument(help="Policy file (default: built-in defaults).")] = None) -> None:
    """Print the effective policy as TOML."""
    from orchestrator.policy.model import load_policy

    console.print(safe(load_policy(file).to_toml()), end="")


@policy_app.command("check")
def policy_check(
    file: Annotated[Path, typer.Argument(help="Policy file to validate.")],
    model: Annotated[str | None, typer.Option(help="Also check that the policy can apply to this model (a cost budget needs its price).")] = None,
) -> None:
    """Validate a policy file (exit 0 if valid, 2 with the file, line and key of every problem if not); warn about what cannot apply."""
    from orchestrator.policy.model import PolicyError, load_policy
    from orchestrator.policy.pricing import policy_warnings

    try:
        loaded = load_policy(file)
    except PolicyError as exc:
        if len(exc.problems) == 1:
            raise
        for problem in exc.problems:
            err_console.print(problem, markup=False)
        raise UsageError(f"{len(exc.problems)} problems in {file}") from None
    warnings = policy_warnings(loaded, model)
    console.print(f"{file}: ok" + (f" ({plural(len(warnings), 'warning')})" if warnings else ""), markup=False)
    for warning in warnings:
        err_console.print(f"airlock: warning: {warning}", markup=False)


@app.command()
def gc(
    all_: Annotated[bool, typer.Option("--all", help="Remove every airlock sandbox, not only those whose airlock process is gone.")] = False,
    backend: Annotated[str, typer.Option(help=f"Where the sandboxes run: {', '.join(BACKENDS)} (Docker: the engine DOCKER_HOST names).")] = DEFAULT_BACKEND,
    namespace: Annotated[str | None, typer.Option(help="Kubernetes namespace (default: the kubeconfig context's).")] = None,
) -> None:
    """Remove sandbox containers (and egress proxies, setup networks) left behind by airlock processes that were killed."""
    chosen = get_backend(backend, _location(backend, namespace))
    removed = chosen.remove_stale(everything=all_)
    console.print(f"removed {len(removed)} sandbox container(s)" + (f": {', '.join(removed)}" if removed else ""))
    envs = chosen.environments().all()
    if envs:
        size = sum(env.size for env in envs) / 1024**2
        console.print(f"kept {len(envs)} environment image(s), {size:.0f} MiB (see `airlock env ls`; `airlock env prune` removes old ones)")


@env_app.command("ls")
def env_ls(backend: Annotated[str, typer.Option(help=f"Where the sandboxes run: {', '.join(BACKENDS)}.")] = DEFAULT_BACKEND) -> None:
    """List the environments built so far: key, repo, size, age, last used."""
    from orchestrator.run.environments import render_environments

    render_environments(get_backend(backend).environments(), console)


@env_app.command("rm")
def env_rm(
    keys: Annotated[list[str], typer.Argument(metavar="KEY", help="Environment keys (a unique prefix is enough).")],
    backend: Annotated[str, typer.Option(help=f"Where the sandboxes run: {', '.join(BACKENDS)}.")] = DEFAULT_BACKEND,
) -> None:
    """Remove environment images by key."""
    from orchestrator.run.environments import remove_environments

    for image in remove_environments(get_backend(backend).environments(), keys):
        console.print(f"removed {image}", markup=False)


@env_app.command("prune")
def env_prune(
    older_than: Annotated[str, typer.Option(help="Remove environments not used for this long: 30d, 12h, 90m.")] = "30d",
    backend: Annotated[str, typer.Option(help=f"Where the sandboxes run: {', '.join(BACKENDS)}.")] = DEFAULT_BACKEND,
) -> None:
    """Remove environment images not used within --older-than."""
    from orchestrator.run.environments import parse_age, prune_environments

    removed = prune_environments(get_backend(backend).environments(), parse_age(older_than))
    console.print(f"removed {len(removed)} environment image(s)" + (f": {', '.join(removed)}" if removed else ""), markup=False)


@app.command()
def review(
    path: Annotated[Path, typer.Argument(help="A batch results folder (one subfolder per run) or one run's folder.")],
    out: Annotated[Path | None, typer.Option(help="Where to write the report (default: PATH/report.html).")] = None,
) -> None:
    """Write a self-contained HTML report of the runs in PATH (no network needed to view it) and print its path."""
    from orchestrator.review.data import load_collection
    from orchestrator.review.report_html import write_report

    typer.echo(str(write_report(load_collection(path), out)))


@app.command()
def show(
    run_dir: Annotated[Path, typer.Argument(metavar="DIR", help="One run's folder (with run.json, patch.diff, trajectory.jsonl).")],
    max_lines: Annotated[int, typer.Option(help="Most diff lines shown per file.")] = 200,
) -> None:
    """Print one run on the terminal: status, what needs attention, diffstat, coloured diff, condensed trajectory."""
    from orchestrator.review.show import load_single_run, render_run

    render_run(load_single_run(run_dir), console, max_lines=max_lines)


def main() -> None:
    """Console entry point: Typer/Click usage errors and our own errors become one line on stderr."""
    _lay_out()
    try:
        code = app(prog_name="airlock", standalone_mode=False)
    except typer.TyperException as exc:  # Click's usage errors (unknown option, bad type, missing argument)
        err_console.print(safe(f"airlock: error: {exc.format_message()}"))
        code = 2
    except typer.Abort:
        err_console.print("airlock: interrupted", markup=False)
        code = 130
    except AirlockError as exc:
        err_console.print(safe(f"airlock: error: {exc}"))
        code = exc.exit_code
    except KeyboardInterrupt:
        err_console.print("airlock: interrupted", markup=False)
        code = 130
    finally:  # the work is saved by now: a late Ctrl-C must not turn a clean exit into a traceback
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_now(code if isinstance(code, int) else 0)


def exit_now(code: int) -> NoReturn:
    """End the process without the interpreter's teardown, which frees what the kernel frees anyway and, with
    a model SDK and docker-py loaded, takes half a second (measured: 0.3 s for the anthropic SDK alone). What
    an exit must do is still done, in the interpreter's order: wait for the threads that are not daemons (a
    pool's task in progress finishes), run the atexit handlers, flush stdout and stderr. Under a profiler,
    debugger or coverage tracer, the normal exit, after which they write what they measured."""
    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)
    # The interpreter's own first step at exit; multiprocessing's children call it too. Absent: nothing to wait for.
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: what is left to say has no reader
            pass
    os._exit(code)
