"""The tasks of a batch: read from JSON Lines, YAML or a plain list of repos, and checked before anything runs.

Every problem is reported as `FILE:LINE: message`, all of them at once, so a long file is fixed in one
pass. A task is fully resolved here (repo path or URL, task text, model, policy, price), so the scheduler
never meets bad input half-way through a batch.

A tasks file is not the operator's word: its policies and limits may only tighten the operator's (see
orchestrator.batch.ceiling), and its local repos must lie below the tasks file's folder or --repos-root.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.batch.ceiling import within
from orchestrator.batch.repo_source import check_ref, is_url, protocol_of, redact, url_basename
from orchestrator.errors import UsageError
from orchestrator.policy.model import Policy, Price, SetupPolicy, load_policy
from orchestrator.policy.pricing import price_for
from orchestrator.providers import DEFAULT_MODEL
from orchestrator.sandbox.egress import covers
from orchestrator.sandbox.spec import DEFAULT_IMAGE

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
RESERVED_IDS = {"summary.json", "predictions.jsonl", "report.html"}  # the batch's own files in the results folder
YAML_SUFFIXES = (".yaml", ".yml")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


class TaskEntry(BaseModel):
    """One task as written in the file; `id` and `task` may come from the repo name and `--task`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str | None = None
    repo: str = Field(min_length=1)
    ref: str | None = Field(None, min_length=1)
    task: str | None = None
    verify: str | None = Field(None, min_length=1)
    model: str | None = Field(None, min_length=1)
    max_steps: int | None = Field(None, ge=1)
    timeout: float | None = Field(None, gt=0)
    image: str | None = Field(None, min_length=1)
    policy: str | None = Field(None, min_length=1)
    # The task's setup phase: a command, a list of them ("auto" detects), or a [setup] table's keys.
    setup: str | list[str] | dict[str, Any] | None = None
    attempts: int | None = Field(None, ge=1)  # `airlock run --attempts`: the chosen patch is the task's
    pick: Literal["smallest", "first", "none"] | None = None  # how attempts without a verify command are chosen


@dataclass(frozen=True)
class Defaults:
    """What the `airlock batch` command line gives every task that does not say otherwise."""

    task: str | None = None
    verify: str | None = None
    model: str = DEFAULT_MODEL
    max_steps: int | None = None  # with timeout and policy: the operator's ceiling
    timeout: float | None = None
    image: str | None = None
    policy: Path | None = None
    allowed_protocols: tuple[str, ...] = ("https",)
    needs_price: bool = False  # --max-total-cost: every task's cost must be known to count it
    model_access: tuple[str, ...] = ()  # --provider, --base-url, --api-key-env, passed on to every run
    repos_root: Path | None = None  # local repos must lie below it (default: the tasks file's folder)
    trust_task_policies: bool = False  # a task's policy replaces the operator's instead of tightening it
    setup: tuple[str, ...] = ()  # --setup: the setup commands of tasks that do not give their own
    attempts: int = 1  # --attempts and --pick: for tasks that do not say
    pick: str | None = None


@dataclass(frozen=True)
class BatchTask:
    id: str
    line: int
    repo: str  # as written: a git URL, or the local path resolved to an absolute one
    task: str
    model: str
    path: Path | None = None  # a local repo
    url: str | None = None  # a git URL to clone
    ref: str | None = None
    verify: str | None = None
    policy: Policy = field(default_factory=Policy)  # the effective one: the task's, within the operator's
    held: tuple[str, ...] = ()  # what the task asked for beyond the operator's ceiling
    price: Price | None = None  # None: the cost is unknown
    model_access: tuple[str, ...] = ()
    sandbox_image: str = DEFAULT_IMAGE  # the image its sandbox runs: `image`, else its policy's
    attempts: int = 1  # more than one: its run is `airlock run --attempts`, and its patch the chosen one
    pick: str | None = None

    def definition(self) -> dict[str, Any]:
        """Everything that decides what the task's run does; a resumed batch runs it again when this changed."""
        return {
            "task": self.task, "repo": self.repo, "ref": self.ref, "model": self.model, "model_access": list(self.model_access),
            "verify": self.verify, "policy": self.policy.model_dump(mode="json"), "attempts": self.attempts, "pick": self.pick,
        }  # fmt: skip

    def resume_options(self) -> list[str]:
        """The `airlock resume` options of its model access (the provider, model and policy are the run's own)."""
        access = list(self.model_access)
        return [part for i, key in enumerate(access) if key in ("--base-url", "--api-key-env") for part in access[i : i + 2]]

    def run_options(self, policy_file: Path, slots: int = 1) -> list[str]:
        """The `airlock run` options that carry this task's settings; its policy is written to `policy_file`;
        its attempts run `slots` at a time."""
        options = [*self.model_access, "--model", self.model, "--policy", str(policy_file)]
        options += ["--verify", self.verify] if self.verify is not None else []
        if self.attempts > 1:
            options += ["--attempts", str(self.attempts), "--jobs", str(slots), *(["--pick", self.pick] if self.pick else [])]
        return options


@dataclass
class Loaded:
    tasks: list[BatchTask] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "FILE:LINE: message", in file order
    _found: list[tuple[int, str]] = field(default_factory=list)

    def problem(self, path: Path, line: int, message: str) -> None:
        """Line 0: about the whole file."""
        self._found.append((line, f"{path}{f':{line}' if line else ''}: {message}"))


def load_tasks(path: Path, defaults: Defaults) -> Loaded:
    """Read and check every task of the file; a file that cannot be read at all is a UsageError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"tasks file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the tasks file {path}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
    suffix = path.suffix.lower()
    loaded = Loaded()
    if suffix in YAML_SUFFIXES:
        entries = _yaml_entries(text, loaded, path)
    elif suffix in JSONL_SUFFIXES:
        entries = _jsonl_entries(text, loaded, path)
    else:
        entries = _plain_entries(text)
        if entries and defaults.task is None:
            loaded.problem(path, 0, "a list of repos needs the task they share: give it with --task")
            entries = []
    checker = _Checker(path, defaults, loaded)
    for line, raw in entries:
        checker.check(line, raw)
    if not entries and not loaded._found:
        loaded.problem(path, 0, "no tasks in the file")
    loaded.problems = [message for _, message in sorted(loaded._found, key=lambda found: found[0])]
    return loaded


# --- the three formats, each giving (line, entry) pairs ------------------------------------------------------


def _jsonl_entries(text: str, loaded: Loaded, path: Path) -> list[tuple[int, Any]]:
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entries.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            loaded.problem(path, number, f"not valid JSON: {exc.msg} (column {exc.colno})")
    return entries


def _plain_entries(text: str) -> list[tuple[int, Any]]:
    """One repo (path or URL) a line; blank lines and `#` comments are skipped."""
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip() and not line.lstrip().startswith("#")]


def _yaml_entries(text: str, loaded: Loaded, path: Path) -> list[tuple[int, Any]]:
    """A YAML list (or `tasks:` holding one) of repo strings or task mappings, each with its line.

    The document is composed first so each item keeps its line, then built with PyYAML's safe
    constructor (exactly what yaml.safe_load uses: plain data only, never Python objects)."""
    import yaml

    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            if root is None:
                return []
            if isinstance(root, yaml.MappingNode):
                root = next((value for key, value in root.value if key.value == "tasks"), root)
            if not isinstance(root, yaml.SequenceNode):
                loaded.problem(path, root.start_mark.line + 1, "expected a list of repos or tasks (or a `tasks:` list)")
                return []
            return [(item.start_mark.line + 1, loader.construct_object(item, deep=True)) for item in root.value]
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loaded.problem(path, mark.line + 1 if mark else 0, f"not valid YAML: {getattr(exc, 'problem', None) or exc}")
        return []


# --- checking one entry --------------------------------------------------------------------------------------


class _Checker:
    def __init__(self, path: Path, defaults: Defaults, loaded: Loaded) -> None:
        self.path, self.defaults, self.loaded = path, defaults, loaded
        self.base = path.resolve().parent  # relative repo and policy paths are relative to the tasks file
        self.seen: dict[str, int] = {}  # id -> the line that first used it
        self.line = 0
        self.policies: dict[Path, Policy | str] = {}  # a policy file shared by many tasks is read once

    def check(self, line: int, raw: Any) -> None:
        self.line = line
        problems: list[str] = []
        task = self._resolve(raw, problems)
        for problem in problems:
            self.loaded.problem(self.path, line, problem)
        if task is not None and not problems:
            self.loaded.tasks.append(BatchTask(line=line, **task))

    def _resolve(self, raw: Any, problems: list[str]) -> dict[str, Any] | None:
        if isinstance(raw, str):
            raw = {"repo": raw}
        if not isinstance(raw, dict):
            problems.append(f'expected a task object like {{"id": ..., "repo": ..., "task": ...}}, not {type(raw).__name__}')
            return None
        try:
            entry = TaskEntry.model_validate(raw)
        except ValidationError as exc:
            problems += [_describe(error) for error in exc.errors()]
            if isinstance(raw.get("id"), str):  # still report a bad or duplicate id
                self._id(raw["id"], "", problems)
            return None
        d = self.defaults
        resolved: dict[str, Any] = {
            "id": self._id(entry.id, entry.repo, problems),
            "task": self._task(entry, problems),
            "model": entry.model or d.model,
            "model_access": d.model_access,
            "verify": entry.verify or d.verify,
            **self._repo(entry, problems),
            **self._attempts(entry, entry.verify or d.verify, problems),
        }
        policy = self._effective_policy(entry, problems)
        if policy is not None:
            resolved["policy"], resolved["held"] = policy
            resolved["price"] = self._price(resolved["policy"], resolved["model"], problems)
            resolved["sandbox_image"] = resolved["policy"].sandbox.image
        return resolved

    def _setup(self, entry: TaskEntry, policy: Policy, ceiling: Policy, problems: list[str]) -> Policy | None:
        """The policy with the task's setup (or --setup) applied; its allow_hosts never go beyond the
        operator's, unless the operator trusts task policies."""
        given = entry.setup if entry.setup is not None else (list(self.defaults.setup) or None)
        if isinstance(given, str):
            given = [given]
        values = {"commands": given} if isinstance(given, list) else dict(given or {})
        try:
            setup = SetupPolicy.model_validate(policy.setup.model_dump() | values)
        except ValidationError as exc:
            problems += [f"setup: {_describe(error)}" for error in exc.errors()]
            return None
        ceiling_hosts = ceiling.setup.allow_hosts
        wider = [] if self.defaults.trust_task_policies else [host for host in setup.allow_hosts if not covers(ceiling_hosts, host)]
        if wider:
            problems.append(f"setup allow_hosts: {', '.join(wider)} not allowed by the batch's policy (a task may not widen the egress allowlist)")
            return None
        if not values:
            return policy
        return policy.with_overrides(**{f"setup_{key}": value for key, value in setup.model_dump().items()})

    def _attempts(self, entry: TaskEntry, verify: str | None, problems: list[str]) -> dict[str, Any]:
        """As `airlock run --attempts` checks them: a verify command's verdict chooses, else `pick` must say how.
        The batch's --pick is for its tasks without a verify command."""
        attempts, pick = entry.attempts or self.defaults.attempts, entry.pick or self.defaults.pick
        if attempts == 1:
            if entry.pick is not None:
                problems.append('"pick" is for several attempts: add "attempts"')
            return {}
        if verify is not None:
            if entry.pick is not None:
                problems.append('"pick" is for attempts without a verify command: with one, an attempt whose verify passed is chosen')
            return {"attempts": attempts}
        if pick is None:
            problems.append('"attempts" without a verify command needs "pick" (smallest, first or none): nothing else can tell the attempts apart')
        return {"attempts": attempts, "pick": pick}

    def _id(self, given: str | None, repo: str, problems: list[str]) -> str:
        derived = given is None
        task_id = given if given is not None else _derived_id(repo)
        if not SAFE_ID.match(task_id):
            what = f"the id derived from the repo name, {task_id!r}," if derived else f"id {task_id!r}"
            problems.append(
                f"{what} is not safe as a folder name: use letters, digits, '.', '_' and '-', starting with a letter or digit, at most 100 characters"
            )
        elif task_id.lower() in RESERVED_IDS:
            problems.append(f"id {task_id!r} is reserved for the batch's own file of that name")
        elif task_id in self.seen:
            hint = " (derived from the repo name: give the task an explicit id)" if derived else ""
            problems.append(f"duplicate id {task_id!r}, first used on line {self.seen[task_id]}{hint}")
        else:
            self.seen[task_id] = self.line
        return task_id

    def _task(self, entry: TaskEntry, problems: list[str]) -> str:
        text = entry.task if entry.task is not None else self.defaults.task
        if text is None or not text.strip():
            problems.append('the task is empty: give it as "task" (or --task for every entry without one)')
            return ""
        return text.strip()

    def _repo(self, entry: TaskEntry, problems: list[str]) -> dict[str, Any]:
        if is_url(entry.repo):
            protocol = protocol_of(entry.repo)
            if protocol not in self.defaults.allowed_protocols:
                allowed = ", ".join(self.defaults.allowed_protocols) or "none"
                problems.append(f"the git protocol {protocol!r} of {redact(entry.repo)} is not allowed (allowed: {allowed}; see --allow-protocol)")
            if entry.ref is not None and (why := check_ref(entry.ref)):
                problems.append(f"ref {entry.ref!r}: {why}")
            return {"repo": redact(entry.repo), "url": entry.repo, "ref": entry.ref}
        if entry.ref is not None:
            problems.append('"ref" needs a git URL: a local repo is copied as it is, uncommitted changes included')
        path = (self.base / entry.repo).resolve()
        root = (self.defaults.repos_root or self.base).resolve()
        if not path.is_relative_to(root):
            where = "--repos-root" if self.defaults.repos_root else "the tasks file's folder"
            problems.append(f"repo {path} is outside {root}: a tasks file's local repos must lie below {where} (name another with --repos-root)")
        elif not path.exists():
            problems.append(f"repo not found: {path}")
        elif not path.is_dir():
            problems.append(f"repo must be a folder, not a file: {path}")
        return {"repo": str(path), "path": path}

    def _effective_policy(self, entry: TaskEntry, problems: list[str]) -> tuple[Policy, tuple[str, ...]] | None:
        """The task's policy (its file and its limits) within the operator's ceiling, and what was held back."""
        ceiling = self._policy(self.defaults.policy, "--policy")
        if not isinstance(ceiling, str):
            ceiling = ceiling.with_overrides(max_steps=self.defaults.max_steps, timeout=self.defaults.timeout)
        own = self._policy((self.base / entry.policy).resolve(), "policy") if entry.policy else ceiling
        if isinstance(ceiling, str) or isinstance(own, str):  # the file's problem, as one line
            problems.append(str(own if isinstance(own, str) else ceiling))
            return None
        try:
            own = own.with_overrides(max_steps=entry.max_steps, timeout=entry.timeout)
            policy, held = within(ceiling, own, trust_task=self.defaults.trust_task_policies)
            with_setup = self._setup(entry, policy, ceiling, problems)
            if with_setup is None:
                return None
            return with_setup.with_overrides(image=entry.image or self.defaults.image), tuple(held)
        except UsageError as exc:
            problems.append(str(exc).replace("--max-steps", "max_steps").replace("--timeout", "timeout").replace("--image", "image"))
            return None

    def _price(self, policy: Policy, model: str, problems: list[str]) -> Price | None:
        """The model's price under the task's effective policy (whose prices are the operator's)."""
        price = price_for(model, policy.budget.prices)
        add = f'add [budget.prices."{model}"] to the operator\'s policy (--policy)'
        if price is None and policy.budget.max_cost_usd is not None:
            problems.append(f"the policy sets max_cost_usd but there is no price for model {model!r} ({add})")
        elif price is None and self.defaults.needs_price:
            problems.append(f"--max-total-cost needs every task's cost, but there is no price for model {model!r} ({add})")
        return price

    def _policy(self, path: Path | None, what: str) -> Policy | str:
        if path is None:
            return Policy()
        if path not in self.policies:
            try:
                self.policies[path] = load_policy(path)
            except UsageError as exc:
                self.policies[path] = f"{what}: {exc}"
        return self.policies[path]


def _derived_id(repo: str) -> str:
    return url_basename(repo) if is_url(repo) else Path(repo.rstrip("/")).name


def _describe(error: Any) -> str:
    key = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(key, list(TaskEntry.model_fields), n=1)
        return f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    if kind == "missing":
        return f"{key!r} is required"
    message = str(error["msg"])
    return f"{key}: {message[:1].lower() + message[1:]}, not {error.get('input')!r}"
