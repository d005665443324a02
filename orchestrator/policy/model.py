"""The run policy: one TOML file a platform team reviews that says what a run may touch, spend and change.

Every section has defaults, so an empty file (or no file) is the built-in policy. A bad file fails before
anything starts with one line naming the file, line, section and key of the first problem (exit 2).
The effective policy (file plus command-line overrides) is recorded with the run and can be rendered
back to TOML that loads to the same policy.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import tomllib
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from orchestrator.errors import UsageError
from orchestrator.sandbox.egress import DEFAULT_ALLOW_HOSTS, check_host, parse_credential_target
from orchestrator.sandbox.spec import DEFAULT_IMAGE
from orchestrator.sizes import parse_size

MiB = 1024**2
GiB = 1024**3
BUILT_IN = "built-in defaults"

# Files that commonly hold secrets; kept out of the sandbox unless a policy says otherwise.
DEFAULT_HIDDEN = [
    ".env", ".env.*", "*.pem", "*.key", "id_rsa*", ".npmrc", ".pypirc", ".netrc",
    ".aws/", ".ssh/", "*.tfstate", "*.tfstate.backup",
]  # fmt: skip


class PolicyError(UsageError):
    """A policy file or a policy override that cannot be used (exit 2). As one line, the first problem;
    `problems` has them all (`airlock policy check` lists them)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]

    @classmethod
    def listing(cls, problems: list[str]) -> PolicyError:
        more = len(problems) - 1
        return cls(problems[0] + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""), problems)


def _size(minimum: int) -> BeforeValidator:
    """A size field: a TOML string like '512m' or '2g', or an integer of bytes."""

    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(f"must be a size like 512m or 2g, not {_show(value)}")
        try:
            return parse_size(value, "size", minimum=minimum)
        except UsageError as exc:
            raise ValueError(str(exc).removeprefix("size ")) from None

    return BeforeValidator(parse)


class _Section(BaseModel):
    # strict: TOML values are typed, so "2" for a number or true for a count is a mistake worth reporting.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


# The workspace is a tmpfs whose pages count toward the memory limit: this much must be left for processes.
PROCESS_MEMORY = 256 * MiB


class LimitsPolicy(_Section):
    cpus: float = Field(2.0, ge=0.01)  # Docker's smallest CPU quota
    memory: Annotated[int, _size(128 * MiB)] = 4 * GiB
    pids: int = Field(512, ge=16)
    disk: Annotated[int, _size(16 * MiB)] = 2 * GiB
    command_timeout: float = Field(120.0, gt=0)
    timeout: float = Field(3600.0, gt=0)
    max_steps: int = Field(50, ge=1)
    max_output_chars: int = Field(50_000, ge=1000)
    context_window: int | None = Field(None, ge=2000)  # tokens; None: the model's (see orchestrator.run.context)
    max_reply_tokens: int | None = Field(None, ge=16)  # one reply; None: the provider's default
    max_repeated_calls: int = Field(3, ge=2)  # the same call with the same result this many times in a row: a nudge, then `stuck`
    max_patch_bytes: Annotated[int, _size(0), Field(ge=1)] = 10 * MiB
    max_patch_files: int = Field(500, ge=1)

    @model_validator(mode="after")
    def _disk_fits_in_memory(self) -> LimitsPolicy:
        if self.disk > self.memory - PROCESS_MEMORY:
            raise ValueError(
                f"the workspace (disk {_exact(self.disk)}) counts toward the memory limit (memory {_exact(self.memory)}) "
                f"and must leave {_exact(PROCESS_MEMORY)} of it for processes: raise memory to at least "
                f"{_exact(self.disk + PROCESS_MEMORY)} or lower disk"
            )
        return self


def _exact(size: int) -> str:
    return f"{size // GiB} GiB" if size % GiB == 0 else f"{size // MiB} MiB" if size % MiB == 0 else f"{size:,} bytes"


SIZE_FIELDS = ("memory", "disk", "max_patch_bytes")


class Price(_Section):
    """USD per million tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_write: float = Field(ge=0)  # 5-minute cache writes
    cache_read: float = Field(ge=0)


class BudgetPolicy(_Section):
    max_input_tokens: int | None = Field(None, ge=1)  # all input: uncached, cache writes and cache reads
    max_output_tokens: int | None = Field(None, ge=1)
    max_cost_usd: float | None = Field(None, gt=0)
    prices: dict[str, Price] = Field(default_factory=dict)


def _rules(value: list[str]) -> list[str]:
    for rule in value:
        if not rule.split():
            raise ValueError("a rule cannot be empty")
    return value


class CommandsPolicy(_Section):
    allow: list[str] | None = None  # None: every command is allowed
    deny: list[str] = Field(default_factory=list)

    @field_validator("allow", "deny")
    @classmethod
    def _not_empty(cls, value: list[str] | None) -> list[str] | None:
        return value if value is None else _rules(value)


class PathsPolicy(_Section):
    protected: list[str] = Field(default_factory=list)
    hidden: list[str] = Field(default_factory=lambda: list(DEFAULT_HIDDEN))

    @field_validator("protected", "hidden")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not pattern.strip("/ "):
                raise ValueError(f"{pattern!r} is not a path pattern")
            if ".." in pattern.split("/"):
                raise ValueError(f"{pattern!r}: patterns are relative to the repo root and cannot contain '..'")
        return value


class NetworkPolicy(_Section):
    mode: str = "none"

    @field_validator("mode")
    @classmethod
    def _none_only(cls, value: str) -> str:
        if value != "none":
            raise ValueError(f"network mode {value!r} is not supported: the sandbox has no network ('none' is the only mode)")
        return value


def _history_choice(value: Any) -> str | int:
    """'full', 'recent', 'none', or a number of commits (from the command line, a string of digits)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value in ("full", "recent", "none") or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ValueError(f"must be full, recent, none or a number of commits (1 or more), not {_show(value)}")


RECENT_COMMITS = 50  # generations of "recent" history, counted as `git clone --depth` counts them


class SandboxPolicy(_Section):
    image: str = Field(DEFAULT_IMAGE, min_length=1)
    runtime: Literal["runc", "runsc"] = "runc"
    user: str = "1000:1000"
    git_history: Annotated[str | int, BeforeValidator(_history_choice)] = "recent"

    @property
    def history_depth(self) -> int | None:
        """Generations of history the sandbox's .git gets: None for all, 0 for none."""
        choice = self.git_history
        return None if choice == "full" else 0 if choice == "none" else RECENT_COMMITS if choice == "recent" else int(choice)

    @field_validator("user")
    @classmethod
    def _not_root(cls, value: str) -> str:
        match = re.fullmatch(r"(\d+):(\d+)", value)
        if not match:
            raise ValueError(f"must be numeric uid:gid like '1000:1000', not {value!r}")
        if int(match.group(1)) == 0:
            raise ValueError(f"{value!r} is root: the sandbox never runs as root, choose a non-zero uid")
        return value


AUTO_SETUP = "auto"


class SetupPolicy(_Section):
    """The setup phase: commands that install the project's dependencies, with egress to `allow_hosts` only."""

    commands: list[str] = Field(default_factory=list)  # [] no setup; ["auto"] detect from the repo's files
    allow_hosts: list[str] = Field(default_factory=lambda: list(DEFAULT_ALLOW_HOSTS))
    timeout: float = Field(900.0, gt=0)
    memory: Annotated[int, _size(256 * MiB)] = 4 * GiB
    disk: Annotated[int, _size(16 * MiB)] = 2 * GiB  # the environment folder's tmpfs (counts toward memory)
    files: list[str] = Field(default_factory=list)  # more repo files whose content is part of the environment key
    ca_bundle: str | None = Field(None, min_length=1)  # a host PEM file the setup trusts (a TLS-inspecting proxy)
    host_ca: bool = True  # without ca_bundle: trust the host's own CA bundle (false: the sandbox image's certificates)
    # "HOST" or "HOST:PORT" -> the name of a variable of airlock's environment holding its credential, which the
    # egress proxy adds as the Authorization header of plain-http requests there; the setup never holds it.
    credentials: dict[str, str] = Field(default_factory=dict)

    @field_validator("commands")
    @classmethod
    def _commands(cls, value: list[str]) -> list[str]:
        if any(not command.strip() for command in value):
            raise ValueError("a setup command cannot be empty")
        if AUTO_SETUP in value and len(value) > 1:
            raise ValueError(f'"{AUTO_SETUP}" detects the commands: give it alone, or list the commands')
        return value

    @field_validator("allow_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        return [check_host(host) for host in value]

    @field_validator("credentials")
    @classmethod
    def _credentials(cls, value: dict[str, str]) -> dict[str, str]:
        checked = {}
        for target, variable in value.items():
            host, port = parse_credential_target(target)
            if not _VARIABLE.fullmatch(variable):
                raise ValueError(f"{variable!r} (for {target!r}) is not an environment variable's name")
            checked[host if port is None else f"{host}:{port}"] = variable
        return checked

    @field_validator("files")
    @classmethod
    def _files(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not pattern.strip("/ ") or ".." in pattern.split("/") or pattern.startswith("/"):
                raise ValueError(f"{pattern!r}: file patterns are relative to the repo root and cannot contain '..'")
        return value


_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LABEL_KEY = re.compile(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


class KubernetesPolicy(_Section):
    """Only for --backend kubernetes: where and how the sandbox pods run."""

    runtime_class: str | None = Field(None, max_length=253)  # the pod's runtimeClassName, e.g. "gvisor"
    node_selector: dict[str, str] = Field(default_factory=dict)  # labels of the nodes sandbox pods may run on
    egress_probe: list[str] = Field(default_factory=list)  # more "host:port" the egress probe must find closed

    @field_validator("runtime_class")
    @classmethod
    def _runtime_class(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a Kubernetes object name (lowercase letters, digits, '-' and '.')")
        return value

    @field_validator("node_selector")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, label in value.items():
            if not _LABEL_KEY.fullmatch(key) or len(key.rpartition("/")[2]) > 63:
                raise ValueError(f"{key!r} is not a Kubernetes label key")
            if not _LABEL_VALUE.fullmatch(label) or len(label) > 63:
                raise ValueError(f"{label!r} (for {key!r}) is not a Kubernetes label value")
        return value

    @field_validator("egress_probe")
    @classmethod
    def _targets(cls, value: list[str]) -> list[str]:
        for target in value:
            host, _, port = target.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{target!r} is not host:port")
        return value


class Policy(_Section):
    limits: LimitsPolicy = Field(default_factory=LimitsPolicy)
    budget: BudgetPolicy = Field(default_factory=BudgetPolicy)
    commands: CommandsPolicy = Field(default_factory=CommandsPolicy)
    paths: PathsPolicy = Field(default_factory=PathsPolicy)
    network: NetworkPolicy = Field(default_factory=NetworkPolicy)
    sandbox: SandboxPolicy = Field(default_factory=SandboxPolicy)
    setup: SetupPolicy = Field(default_factory=SetupPolicy)
    kubernetes: KubernetesPolicy = Field(default_factory=KubernetesPolicy)
    # Where it came from; provenance, not content, so it is neither TOML nor part of equality.
    _source: str = PrivateAttr(default=BUILT_IN)
    _overrides: tuple[str, ...] = PrivateAttr(default=())

    @property
    def source(self) -> str:
        return self._source

    @property
    def overrides(self) -> tuple[str, ...]:
        """The command-line flags that replaced values of the source, e.g. ('--memory',)."""
        return self._overrides

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Policy):
            return NotImplemented
        return self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # the sections hold lists

    def with_overrides(self, **values: Any) -> Policy:
        """A new policy with command-line values (limits keys, `image`, `runtime`, `setup_<key>`) replacing the file's; None means not given."""
        given = {key: value for key, value in values.items() if value is not None}
        unknown = set(given) - OVERRIDABLE
        if unknown:
            raise ValueError(f"not a policy override: {', '.join(sorted(unknown))}")
        if not given:
            return self
        data = self.model_dump()
        for key, value in given.items():
            if key.startswith("setup_"):
                data["setup"][key.removeprefix("setup_")] = value
            else:
                data["sandbox" if key in SANDBOX_OVERRIDES else "limits"][key] = value
        try:
            policy = Policy.model_validate(data)
        except ValidationError as exc:
            error = exc.errors()[0]
            flag = _flag(error["loc"])
            raise PolicyError(f"{flag} {_message(error)}" if flag else _message(error)) from None
        policy._source = self._source
        policy._overrides = tuple(dict.fromkeys([*self._overrides, *(f"--{key.replace('_', '-')}" for key in given)]))
        return policy

    def to_record(self) -> dict[str, Any]:
        """JSON-able, sizes in bytes, with where the policy came from."""
        record: dict[str, Any] = {"source": self._source}
        if self._overrides:
            record["overrides"] = list(self._overrides)
        return record | self.model_dump(mode="json")

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Policy:
        """The policy `to_record` wrote (e.g. run.json's `policy`), provenance included; PolicyError if it is not one."""
        data = {key: value for key, value in record.items() if key not in ("source", "overrides")}
        try:
            policy = cls.model_validate(data)
        except ValidationError as exc:
            error = exc.errors()[0]
            raise PolicyError(f"the recorded policy is not valid: {_where(error['loc']) or 'policy'}: {_message(error)}") from None
        policy._source = str(record.get("source", BUILT_IN))
        policy._overrides = tuple(str(flag) for flag in record.get("overrides", ()))
        return policy

    def to_toml(self) -> str:
        """The effective policy as TOML that `load_policy` reads back to an equal policy."""
        header = [f"# airlock policy: the effective values (source: {' '.join(self._source.splitlines())})"]
        if self._overrides:
            header.append(f"# overridden on the command line: {', '.join(self._overrides)}")
        sizes: set[tuple[str, ...]] = {("limits", name) for name in SIZE_FIELDS} | {("setup", "memory"), ("setup", "disk")}
        return _render(self.model_dump(), header, sizes=sizes)


SANDBOX_OVERRIDES = frozenset({"image", "runtime", "git_history"})
# Overrides whose command-line flag is not `--<section-prefix><key>`.
_FLAGS = {"setup-commands": "setup", "setup-ca-bundle": "setup-ca", "setup-credentials": "setup-secret"}
OVERRIDABLE = frozenset(LimitsPolicy.model_fields) | SANDBOX_OVERRIDES | {f"setup_{name}" for name in SetupPolicy.model_fields}


def _flag(loc: tuple[int | str, ...]) -> str:
    """The command-line flag of an error's key ('--git-history', '--setup'); none for a rule across keys."""
    if len(loc) > 1 and loc[0] == "setup":
        flag = f"setup-{loc[1]}".replace("_", "-")
        return f"--{_FLAGS.get(flag, flag)}"
    keys = [part for part in loc if isinstance(part, str) and part in OVERRIDABLE]
    return f"--{keys[0].replace('_', '-')}" if keys else ""


def load_policy(path: Path | None) -> Policy:
    """The policy in `path`, or the built-in defaults for None. Any problem is a PolicyError naming file and line."""
    if path is None:
        return Policy()
    if not path.exists():
        raise PolicyError(f"policy file not found: {path}")
    if path.is_dir():
        raise PolicyError(f"the policy must be a file, not a folder: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read the policy file {path}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        raise PolicyError(f"{path}{f':{line.group(1)}' if line else ''}: invalid TOML: {exc}") from None
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError.listing(_describe(path, text, exc)) from None
    policy._source = str(path)
    return policy


# --- one clear line per validation error -------------------------------------------------------------------


def _describe(path: Path, text: str, exc: ValidationError) -> list[str]:
    """Every problem in file order, each as 'PATH:LINE: [section] key: message'."""
    lines = _key_lines(text)
    located = [(_line_of(error["loc"], lines), error) for error in exc.errors()]
    # File order, unlocated ones after; a missing key last, as it is often the consequence of a misspelt one.
    located.sort(key=lambda item: (item[1]["type"] == "missing", item[0] is None, item[0] or 0))
    problems = []
    for line, error in located:
        loc = error["loc"]
        where = f"[{_key(str(loc[0]))}]" if len(loc) == 1 and isinstance(error.get("input"), dict) else _where(loc)
        problems.append(f"{path}{f':{line}' if line else ''}: {where}{': ' if where else ''}{_message(error)}")
    return problems


def _where(loc: tuple[int | str, ...]) -> str:
    keys = [str(part) for part in loc if isinstance(part, str)]
    indexes = "".join(f"[{part}]" for part in loc if isinstance(part, int))
    if not keys:
        return ""
    table, key = keys[:-1], _key(keys[-1]) + indexes
    return f"[{'.'.join(_key(part) for part in table)}] {key}" if table else key


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _bound(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


_TYPES = {
    "int_type": "a whole number", "int_parsing": "a whole number", "int_from_float": "a whole number",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "string_type": "a string in quotes", "bool_type": "true or false",
    "list_type": 'a list like ["a", "b"]', "dict_type": "a table", "model_type": "a table",
}  # fmt: skip


def _message(error: Any) -> str:
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "extra_forbidden":
        return _unknown(error["loc"], value)
    if kind == "missing":
        return "required key is missing"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "value_error":
        return str(ctx["error"])
    if kind in _TYPES:
        return f"must be {_TYPES[kind]}, not {_show(value)}"
    if kind == "greater_than":
        return f"must be greater than {_bound(ctx['gt'])}, not {_show(value)}"
    if kind == "greater_than_equal":
        return f"must be at least {_bound(ctx['ge'])}, not {_show(value)}"
    if kind == "literal_error":
        return f"must be {ctx['expected']}, not {_show(value)}"
    message = str(error["msg"])
    return message[:1].lower() + message[1:]


def _unknown(loc: tuple[int | str, ...], value: Any) -> str:
    """'unknown key', with the likely intended key or the section a stray key belongs in."""
    *table, key = [str(part) for part in loc]
    model: Any = Policy
    parts = iter(table)
    for part in parts:
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        if get_origin(annotation) is dict:  # [budget.prices."MODEL"]: the next part is a name, not a field
            annotation = get_args(annotation)[1]
            next(parts, None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return "unknown key"
        model = annotation
    if model is Policy:
        owner = next((name for name, section in _SECTIONS.items() if key in section.model_fields), None)
        if owner:
            return f"unknown key at the top level (it belongs in [{owner}])"
    close = difflib.get_close_matches(key, list(model.model_fields), n=1)
    what = "section" if model is Policy and isinstance(value, dict) else "key"
    return f"unknown {what}" + (f" (did you mean {close[0]!r}?)" if close else "")


_SECTIONS: dict[str, type[BaseModel]] = {name: field.annotation for name, field in Policy.model_fields.items()}  # type: ignore[misc]

_HEADER = re.compile(r"^\s*\[(?!\[)(.+?)\]\s*(?:#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"'. ]+?)\s*=")


def _key_path(text: str) -> tuple[str, ...] | None:
    """'a.b', '"x.y".z' -> the key path, using TOML's own parser for the quoting rules."""
    try:
        data: Any = tomllib.loads(f"{text} = 0")
    except tomllib.TOMLDecodeError:
        return None
    path = []
    while isinstance(data, dict) and len(data) == 1:
        key, data = next(iter(data.items()))
        path.append(key)
    return tuple(path)


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Best effort: the line of each table header and key, by full key path (first occurrence)."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), 1):
        if header := _HEADER.match(line):
            table = _key_path(header.group(1)) or table
            lines.setdefault(table, number)
        elif key := _KEY.match(line):
            if path := _key_path(key.group(1)):
                lines.setdefault(table + path, number)
    return lines


def _line_of(loc: tuple[int | str, ...], lines: dict[tuple[str, ...], int]) -> int | None:
    """The line of the key, else of its nearest enclosing table that is written out, else None."""
    path = tuple(str(part) for part in loc if isinstance(part, str))
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


# --- rendering TOML (flat values, lists of strings, nested tables) ------------------------------------------

_UNSET = {
    "allow": "every command is allowed",
    "ca_bundle": "the host's own bundle (host_ca), else the sandbox image's certificates",
    "runtime_class": "the cluster's default runtime",
}
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + re.sub(r"[\x00-\x08\x0a-\x1f\x7f]", lambda m: f"\\u{ord(m.group()):04x}", escaped) + '"'


def _toml_size(size: int) -> str:
    """'4g' when a unit divides the size exactly, else the byte count."""
    for suffix, unit in (("t", 1024**4), ("g", GiB), ("m", MiB), ("k", 1024)):
        if size % unit == 0:
            return _string(f"{size // unit}{suffix}")
    return str(size)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        items = [_value(item) for item in value]
        one_line = "[" + ", ".join(items) + "]"
        return one_line if len(one_line) <= 80 else "[\n" + "".join(f"    {item},\n" for item in items) + "]"
    raise TypeError(f"cannot render {type(value).__name__} as TOML")


def _render(data: dict[str, Any], header: list[str], *, sizes: set[tuple[str, ...]]) -> str:
    out = list(header)

    def table(path: tuple[str, ...], values: dict[str, Any]) -> None:
        if len(path) == 1 or not all(isinstance(value, dict) for value in values.values()):
            out.extend(["", "[" + ".".join(_key(part) for part in path) + "]"])
        for key, value in values.items():
            if value is None:  # TOML has no null: an absent key is the default, None
                out.append(f"# {_key(key)}: not set ({_UNSET.get(key, 'no limit')})")
            elif not isinstance(value, dict):
                shown = _toml_size(value) if (*path, key) in sizes else _value(value)
                out.append(f"{_key(key)} = {shown}")
        for key, value in values.items():
            if isinstance(value, dict) and value:
                table((*path, key), value)

    for name, section in data.items():
        table((name,), section)
    return "\n".join(out) + "\n"
