"""Policies: the shipped files, one-line errors with file and line, overrides, records, TOML round trips, globs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from orchestrator.errors import UsageError
from orchestrator.globs import TreeMatcher, path_matches
from orchestrator.policy.guard import PolicyGuard
from orchestrator.policy.model import (
    DEFAULT_HIDDEN,
    GiB,
    LimitsPolicy,
    MiB,
    Policy,
    PolicyError,
    load_policy,
)

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def write(tmp_path: Path, text: str, name: str = "policy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert isinstance(caught.value, UsageError) and caught.value.exit_code == 2
    return str(caught.value)


# --- the shipped policies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["default.toml", "strict.toml", "ci.toml"])
def test_shipped_policies_load(name: str) -> None:
    policy = load_policy(POLICIES / name)
    assert policy.source == str(POLICIES / name)
    assert policy.network.mode == "none"
    assert policy.sandbox.user == "1000:1000"


def test_default_toml_is_the_built_in_defaults() -> None:
    default, built_in = load_policy(POLICIES / "default.toml"), load_policy(None)
    assert default == built_in
    assert (default.source, built_in.source) == (str(POLICIES / "default.toml"), "built-in defaults")


def test_default_toml_mentions_every_key() -> None:
    text = (POLICIES / "default.toml").read_text()
    for section, field in Policy.model_fields.items():
        assert re.search(rf"^\[{section}\]", text, re.M), section
        for key in field.annotation.model_fields:  # type: ignore[union-attr]
            written = rf"^(# )?({key} = |\[{section}\.{key}\.)"  # a key, or a table under it ([budget.prices."m"])
            assert re.search(written, text, re.M), f"[{section}] {key} is not documented in default.toml"


def test_strict_policy() -> None:
    strict = load_policy(POLICIES / "strict.toml")
    assert strict.limits == LimitsPolicy(
        cpus=1, memory=GiB, pids=256, disk=512 * MiB, command_timeout=60, timeout=900, max_steps=30,
        max_output_chars=30_000, max_patch_bytes=MiB, max_patch_files=50,
    )  # fmt: skip
    # Budgets in tokens, so the policy works with any model: a cost budget would refuse every unpriced one.
    assert strict.budget.max_cost_usd is None and strict.budget.max_input_tokens and strict.budget.max_output_tokens
    assert PolicyGuard(strict, "Qwen2.5-Coder-1.5B-Instruct").price is None
    assert strict.commands.allow is not None
    vocabulary = {"python", "python3", "pytest", "pip", "ls", "cat", "grep", "find", "head", "tail", "wc", "echo", "true", "false", "git"}
    assert vocabulary <= set(strict.commands.allow)
    assert "git push" in strict.commands.deny
    tests = ["tests/test_a.py", "test/x/y.py", "pkg/test_mod.py", "pkg/mod_test.py", "conftest.py", "src/conftest.py", "x_test.go", "a.test.js", "b.spec.ts"]
    for test_file in tests:
        assert path_matches(test_file, strict.paths.protected), test_file
    assert path_matches("src/app.py", strict.paths.protected) is None
    assert strict.paths.hidden == DEFAULT_HIDDEN


def test_ci_policy() -> None:
    ci = load_policy(POLICIES / "ci.toml")
    assert ci.commands.allow is None
    assert {"curl", "wget", "ssh", "scp", "nc", "git push"} <= set(ci.commands.deny)
    assert ci.budget.max_cost_usd is not None
    for path in [".github/workflows/ci.yml", ".gitlab-ci.yml", "Makefile", "CODEOWNERS", "tests/test_x.py"]:
        assert path_matches(path, ci.paths.protected), path
    assert path_matches("docs/Makefile", ci.paths.protected) is None  # '/Makefile': the root one only
    assert set(DEFAULT_HIDDEN) <= set(ci.paths.hidden)


def test_empty_file_is_the_defaults(tmp_path: Path) -> None:
    assert load_policy(write(tmp_path, "")) == Policy()


# --- one line naming file, line, section and key -----------------------------------------------------------

BAD = """\
# a policy with mistakes
[limits]
cpus = 1.0
memorry = "4g"
max_steps = "ten"

[budget]
max_cost_usd = 2.0

[sandbox]
image = "x"
"""


def test_unknown_key_names_file_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, BAD)
    assert load_error(path) == f"{path}:4: [limits] memorry: unknown key (did you mean 'memory'?) (and 1 more problem)"


def test_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, BAD.replace('memorry = "4g"', 'memory = "4g"'))
    assert load_error(path) == f"{path}:5: [limits] max_steps: must be a whole number, not 'ten'"


def test_bad_size(tmp_path: Path) -> None:
    path = write(tmp_path, '[sandbox]\nruntime = "runc"\n\n[limits]\npids = 64\nmemory = "4x"\n')
    assert load_error(path) == f"{path}:6: [limits] memory: must be a size like 512m or 2g, not '4x'"


def test_size_below_minimum(tmp_path: Path) -> None:
    path = write(tmp_path, '[limits]\ndisk = "1m"\n')
    assert load_error(path) == f"{path}:2: [limits] disk: must be at least 16 MiB, not '1m'"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("512m", 512 * MiB), ("2g", 2 * GiB), ("1.5GiB", int(1.5 * GiB)), (3 * GiB, 3 * GiB)],
)
def test_size_forms(tmp_path: Path, text: str | int, expected: int) -> None:
    value = f'"{text}"' if isinstance(text, str) else str(text)
    assert load_policy(write(tmp_path, f'[limits]\ndisk = "64m"\nmemory = {value}\n')).limits.memory == expected


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\ncpus = 2\npids = \n")
    message = load_error(path)
    assert message.startswith(f"{path}:3: invalid TOML: ")
    assert "(at line 3, column" in message


def test_duplicate_key_is_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nmax_steps = 1\nmax_steps = 2\n")
    assert load_error(path).startswith(f"{path}:3: invalid TOML: ")


def test_missing_file(tmp_path: Path) -> None:
    assert load_error(tmp_path / "nope.toml") == f"policy file not found: {tmp_path / 'nope.toml'}"


def test_folder_is_not_a_policy(tmp_path: Path) -> None:
    assert "must be a file" in load_error(tmp_path)


def test_network_mode_other_than_none_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[network]\nmode = "bridge"\n')
    assert load_error(path) == (f"{path}:2: [network] mode: network mode 'bridge' is not supported: the sandbox has no network ('none' is the only mode)")


@pytest.mark.parametrize("user", ["0:0", "0:1000"])
def test_root_user_is_refused(tmp_path: Path, user: str) -> None:
    path = write(tmp_path, f'[sandbox]\nuser = "{user}"\n')
    assert load_error(path) == f"{path}:2: [sandbox] user: '{user}' is root: the sandbox never runs as root, choose a non-zero uid"


def test_user_must_be_numeric(tmp_path: Path) -> None:
    path = write(tmp_path, '[sandbox]\nuser = "airlock"\n')
    assert load_error(path) == f"{path}:2: [sandbox] user: must be numeric uid:gid like '1000:1000', not 'airlock'"
    assert load_policy(write(tmp_path, '[sandbox]\nuser = "1001:0"\n', "ok.toml")).sandbox.user == "1001:0"


def test_runtime_is_runc_or_runsc(tmp_path: Path) -> None:
    path = write(tmp_path, '[sandbox]\nruntime = "kata"\n')
    assert load_error(path) == f"{path}:2: [sandbox] runtime: must be 'runc' or 'runsc', not 'kata'"
    assert load_policy(write(tmp_path, '[sandbox]\nruntime = "runsc"\n', "ok.toml")).sandbox.runtime == "runsc"


def test_key_in_a_quoted_price_table(tmp_path: Path) -> None:
    path = write(tmp_path, '[budget]\nmax_cost_usd = 1.0\n\n[budget.prices."my model"]\ninptu = 1.0\noutput = 2.0\n')
    assert load_error(path).startswith(f"{path}:5: [budget.prices.\"my model\"] inptu: unknown key (did you mean 'input'?)")


def test_missing_price_key_points_at_its_table(tmp_path: Path) -> None:
    path = write(tmp_path, "[budget.prices.m]\ninput = 1.0\noutput = 2.0\ncache_write = 1.25\n")
    assert load_error(path) == f"{path}:1: [budget.prices.m] cache_read: required key is missing"


def test_stray_top_level_key_says_where_it_belongs(tmp_path: Path) -> None:
    path = write(tmp_path, '# x\nmemory = "1g"\n')
    assert load_error(path) == f"{path}:2: memory: unknown key at the top level (it belongs in [limits])"


def test_unknown_section(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\npids = 64\n\n[limit]\npids = 64\n")
    assert load_error(path) == f"{path}:4: [limit]: unknown section (did you mean 'limits'?)"
    path = write(tmp_path, "verbose = true\n", "scalar.toml")
    assert load_error(path) == f"{path}:1: verbose: unknown key"


def test_first_problem_in_file_order(tmp_path: Path) -> None:
    path = write(tmp_path, '[sandbox]\nuser = "0:0"\n[limits]\npids = 1\n')
    assert load_error(path) == f"{path}:2: [sandbox] user: '0:0' is root: the sandbox never runs as root, choose a non-zero uid (and 1 more problem)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[limits]\ncpus = 0.0\n", "[limits] cpus: must be at least 0.01, not 0.0"),
        ("[limits]\npids = 8\n", "[limits] pids: must be at least 16, not 8"),
        ('[limits]\ncpus = "2"\n', "[limits] cpus: must be a number, not '2'"),
        ("[limits]\nmax_steps = true\n", "[limits] max_steps: must be a whole number, not true"),
        ("[limits]\ntimeout = inf\n", "[limits] timeout: must be a finite number, not inf"),
        ('[commands]\nallow = "python"\n', '[commands] allow: must be a list like ["a", "b"], not \'python\''),
        ('[commands]\ndeny = ["git push", " "]\n', "[commands] deny: a rule cannot be empty"),
        ('[paths]\nprotected = ["../x"]\n', "[paths] protected: '../x': patterns are relative to the repo root and cannot contain '..'"),
        ('[paths]\nhidden = [".env", 3]\n', "[paths] hidden[1]: must be a string in quotes, not 3"),
        ("[budget]\nmax_cost_usd = -1.0\n", "[budget] max_cost_usd: must be greater than 0, not -1.0"),
        ("limits = 3\n", "limits: must be a table, not 3"),
    ],
)
def test_validation_messages(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    line = text.count("\n")  # every case's problem is on its last line
    assert load_error(path) == f"{path}:{line}: {message}"


# --- overrides, records, TOML --------------------------------------------------------------------------------


def test_overrides_replace_the_file_values(tmp_path: Path) -> None:
    strict = load_policy(POLICIES / "strict.toml")
    changed = strict.with_overrides(memory="2g", max_steps=10, cpus=None, image="my-image:1", disk=None)
    assert (changed.limits.memory, changed.limits.max_steps, changed.sandbox.image) == (2 * GiB, 10, "my-image:1")
    assert changed.limits.cpus == strict.limits.cpus == 1.0
    assert changed.commands == strict.commands
    assert strict.limits.memory == GiB  # the original is unchanged
    assert changed.source == strict.source
    assert changed.overrides == ("--memory", "--max-steps", "--image")
    assert changed.to_record()["overrides"] == ["--memory", "--max-steps", "--image"]
    assert strict.with_overrides(memory=None) is strict


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"memory": "4x"}, "--memory must be a size like 512m or 2g, not '4x'"),
        ({"memory": "64m"}, "--memory must be at least 128 MiB, not '64m'"),
        ({"pids": 8}, "--pids must be at least 16, not 8"),
        ({"max_steps": 0}, "--max-steps must be at least 1, not 0"),
        ({"command_timeout": 0.0}, "--command-timeout must be greater than 0, not 0.0"),
    ],
)
def test_override_errors_name_the_flag(values: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        Policy().with_overrides(**values)
    assert str(caught.value) == message


def test_unknown_override_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="not a policy override: user"):
        Policy().with_overrides(user="0:0")


def test_the_runtime_can_be_overridden_and_is_checked() -> None:
    assert Policy().with_overrides(runtime="runsc").sandbox.runtime == "runsc"
    with pytest.raises(PolicyError, match="--runtime must be 'runc' or 'runsc', not 'kata'"):
        Policy().with_overrides(runtime="kata")


def test_record_is_json_with_sizes_in_bytes() -> None:
    record = load_policy(POLICIES / "ci.toml").to_record()
    assert json.loads(json.dumps(record)) == record
    assert record["source"] == str(POLICIES / "ci.toml")
    assert record["limits"]["memory"] == 4 * GiB
    assert record["commands"]["allow"] is None
    assert "overrides" not in record


CUSTOM = """\
[limits]
memory = 1000000001
disk = "512m"
max_patch_bytes = "1536k"
cpus = 0.5

[budget]
max_output_tokens = 1000

[budget.prices."claude-x.1 \\"beta\\""]
input = 1.5
output = 7.0
cache_write = 1.875
cache_read = 0.15

[budget.prices.plain]
input = 0.0
output = 0.0
cache_write = 0.0
cache_read = 0.0

[commands]
allow = []
deny = ["rm -rf", "say \\"hi\\"\\tthere"]

[paths]
protected = ["src/**/test_*.py", "/Makefile", "docs/"]
hidden = []

[sandbox]
image = "registry.example/airlock:2"
runtime = "runsc"
user = "2000:2000"
"""


@pytest.mark.parametrize("source", ["built-in", "default.toml", "strict.toml", "ci.toml", "custom"])
def test_to_toml_round_trip(tmp_path: Path, source: str) -> None:
    if source == "built-in":
        policy = Policy()
    elif source == "custom":
        policy = load_policy(write(tmp_path, CUSTOM, "custom.toml"))
    else:
        policy = load_policy(POLICIES / source)
    policy = policy.with_overrides(max_steps=7)
    rendered = policy.to_toml()
    again = load_policy(write(tmp_path, rendered, "rendered.toml"))
    assert again == policy

    def body(text: str) -> list[str]:  # all but the header, which names the source
        return [line for line in text.splitlines() if not line.startswith(("# airlock policy", "# overridden"))]

    assert body(again.to_toml()) == body(rendered)


def test_to_toml_is_readable() -> None:
    rendered = load_policy(POLICIES / "strict.toml").to_toml()
    assert 'memory = "1g"' in rendered and 'disk = "512m"' in rendered
    assert "# airlock policy: the effective values (source: " in rendered
    assert "# allow: not set (every command is allowed)" in Policy().to_toml()


# --- [paths] globs -------------------------------------------------------------------------------------------

PATH_CASES = [
    # pattern, path, matches
    ("*.pem", "key.pem", True),
    ("*.pem", "a/b/key.pem", True),
    ("*.pem", "a/b/key.pem.txt", False),
    ("*.pem", "certs.pem/readme", True),  # a folder named like it, and everything in it
    (".env", ".env", True),
    (".env", "app/.env", True),
    (".env", ".envrc", False),
    (".env.*", "config/.env.local", True),
    ("id_rsa*", "home/id_rsa.pub", True),
    (".ssh/", ".ssh/id", True),
    (".ssh/", "home/.ssh/x", True),
    (".ssh/", ".ssh", True),  # the folder itself (a bare path does not say it is a folder)
    (".ssh/", "a/.sshx/y", False),
    ("tests/**", "tests/a.py", True),
    ("tests/**", "tests/x/y.py", True),
    ("tests/**", "src/tests/a.py", False),  # anchored at the root
    ("tests/**", "testsuite/a.py", False),
    ("src/**/test_*.py", "src/test_a.py", True),
    ("src/**/test_*.py", "src/a/b/test_c.py", True),
    ("src/**/test_*.py", "src/a/b/c_test.py", False),
    ("src/**/test_*.py", "lib/src/test_a.py", False),
    ("**/fixtures", "a/b/fixtures/x.json", True),
    ("**/fixtures", "fixtures", True),
    ("docs/*.md", "docs/a.md", True),
    ("docs/*.md", "docs/sub/a.md", False),
    ("/Makefile", "Makefile", True),
    ("/Makefile", "sub/Makefile", False),
    ("Makefile", "sub/Makefile", True),
    (".github/workflows/", ".github/workflows/ci.yml", True),
    ("test_?.py", "pkg/test_a.py", True),
    ("test_?.py", "pkg/test_ab.py", False),
    ("[Mm]akefile", "makefile", True),
    ("*.[!p]y", "a.xy", True),
    ("*.[!p]y", "a.py", False),
    ("*.PEM", "key.pem", False),  # case-sensitive
    ("a+b(c).txt", "x/a+b(c).txt", True),  # regex characters are literal
]


@pytest.mark.parametrize(("pattern", "path", "matches"), PATH_CASES)
def test_path_matches(pattern: str, path: str, matches: bool) -> None:
    assert path_matches(path, [pattern]) == (pattern if matches else None)


@pytest.mark.parametrize(("pattern", "path", "matches"), PATH_CASES)
def test_a_walk_from_the_root_matches_exactly_what_path_matches_does(pattern: str, path: str, matches: bool) -> None:
    """TreeMatcher checks one entry at a time below folders that did not match, as the copy-in and the
    history filter walk; it must agree with path_matches on the whole path, with other patterns beside it."""
    for patterns in ([pattern], [pattern, "unrelated/**", "*.nothing"]):
        matcher = TreeMatcher(patterns)
        parts = path.split("/")
        walked = any(matcher.matches("/".join(parts[: n + 1]), parts[n]) for n in range(len(parts)))
        assert walked == matches
    assert not TreeMatcher([])


def test_path_matches_returns_the_first_matching_pattern() -> None:
    assert path_matches("tests/test_a.py", ["*.md", "test_*.py", "tests/**"]) == "test_*.py"
    assert path_matches("README.md", []) is None


def test_policy_from_record_round_trips() -> None:
    policy = load_policy(Path(__file__).parents[2] / "policies" / "strict.toml").with_overrides(cpus=1, memory="1g")
    loaded = Policy.from_record(json.loads(json.dumps(policy.to_record())))
    assert loaded == policy and (loaded.source, loaded.overrides) == (policy.source, ("--cpus", "--memory"))
    with pytest.raises(PolicyError, match=r"recorded policy is not valid: \[limits\] cpus"):
        Policy.from_record({**policy.to_record(), "limits": {"cpus": "many"}})


# --- [sandbox] git_history and the workspace inside memory --------------------------------------------------


@pytest.mark.parametrize(("value", "parsed", "depth"), [("full", "full", None), ("recent", "recent", 50), ("none", "none", 0), ("7", 7, 7), (12, 12, 12)])
def test_git_history_choices(value: str | int, parsed: str | int, depth: int | None, tmp_path: Path) -> None:
    policy = Policy().with_overrides(git_history=value)
    assert (policy.sandbox.git_history, policy.sandbox.history_depth) == (parsed, depth)
    assert Policy().sandbox.git_history == "recent"
    assert load_policy(write(tmp_path, policy.to_toml())) == policy


@pytest.mark.parametrize("value", ["all", "0", 0, -3, True, "lots"])
def test_bad_git_history_choices_say_what_is_allowed(value: str | int) -> None:
    with pytest.raises(PolicyError, match="^--git-history must be full, recent, none or a number of commits"):
        Policy().with_overrides(git_history=value)


def test_a_workspace_that_leaves_no_memory_for_processes_is_refused(tmp_path: Path) -> None:
    """The workspace is a tmpfs in the sandbox's memory: --disk 2g under --memory 1g cannot work, and says why."""
    with pytest.raises(PolicyError) as refused:
        Policy().with_overrides(memory="1g", disk="2g")
    assert str(refused.value) == (
        "the workspace (disk 2 GiB) counts toward the memory limit (memory 1 GiB) and must leave 256 MiB of it for processes: "
        "raise memory to at least 2304 MiB or lower disk"
    )
    with pytest.raises(PolicyError, match="raise memory to at least 2304 MiB or lower disk"):
        Policy().with_overrides(memory="512m")  # the default workspace of 2 GiB
    assert Policy().with_overrides(memory="2304m").limits.memory == 2304 * MiB
    path = write(tmp_path, '[limits]\nmemory = "1g"\n')
    assert load_error(path).startswith(f"{path}:1: [limits]: the workspace (disk 2 GiB) counts toward the memory limit")
