"""The [commands] allow and deny lists, checked on the host against every command a bash line would run.

`simple_commands` reads a bash command line the way bash splits it: lists and pipelines (`;`, `&`, `&&`,
`||`, `|`, `|&`, newlines), subshells and groups, `$(...)`, backticks and `<(...)`/`>(...)` (also inside
double quotes and unquoted here-documents), `bash -c '...'`, `eval`, and wrappers that run another
command (`sudo`, `env`, `exec`, `command`, `builtin`, `nohup`, `nice`, `timeout`, `xargs`,
`find -exec`, ...): the wrapper and the wrapped command are both checked. Assignments (`FOO=1 cmd`),
redirections (`2>&1`, `>out`), here-document bodies and keywords (`if`, `for x in ...; do`, `case`
patterns, `[[ ... ]]`, `(( ... ))`) are not commands.

A rule is one or more words. The first matches the command's name by basename (`/usr/bin/git` is
`git`), with globs (`python3*`). Further words: an allow rule's must be the command's next arguments
(`git status` does not allow `git push --status`); a deny rule's must appear among the arguments in
order (`git push` also refuses `git -C . push`, and, erring on the safe side, `git stash push`).

This is a second layer, not the boundary; the container is. What it cannot see:
- interpreters and build tools run arbitrary code: `python -c`, `pytest` (conftest.py), `make`,
  `pip install` (setup.py), `awk 'BEGIN{system(...)}'`, `git -c alias.x='!cmd'`, `sed e`;
- scripts written to disk by one command and run by another (`./run.sh`, `python x.py`);
- names computed at run time: `$cmd args`, `eval "$(...)"` (with an allow list these are refused,
  since their name is not a literal; with only a deny list they pass);
- with only a deny list, anything spelled so the literal name differs (`c''url` is seen as curl, but
  `c$(true)url` is not).
With an allow list in force, `eval`, `source` and `.` are refused unless allowed explicitly, like any
other command.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

KEYWORDS = frozenset({"if", "then", "else", "elif", "fi", "while", "until", "do", "done", "!", "{", "}", "esac", "coproc"})
_OPERATORS = (";;&", "&>>", "<<<", "<<-", ";;", ";&", "&&", "||", "|&", "&>", ">>", ">&", ">|", "<<", "<&", "<>", "<", ">", ";", "&", "|", "(", ")")
_REDIRECTIONS = frozenset({"<", ">", ">>", ">&", "<&", ">|", "<>", "&>", "&>>", "<<", "<<-", "<<<"})
_SEPARATORS = frozenset({";", "&", "&&", "||", "|", "|&", "\n", ";;", ";&", ";;&"})
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\[[^\]]*\])?\+?=")
_FD_PREFIX = re.compile(r"\d+|\{[A-Za-z_][A-Za-z0-9_]*\}")
_MAX_DEPTH = 32


class CommandParseError(ValueError):
    """The command line is not balanced (quotes, parentheses), so its commands cannot be known."""


@dataclass
class _Word:
    text: str  # quotes and escapes removed; expansions kept as written
    raw: str  # as written
    quoted: bool  # some part was quoted or escaped: not a keyword, not an assignment name


@dataclass
class _Op:
    op: str


_Token = _Word | _Op


def simple_commands(command_line: str) -> list[list[str]]:
    """The words of every simple command the line would run, substitutions before the command using them."""
    return _Shell(command_line, 0).commands()


def check_command(command_line: str, allow: list[str] | None, deny: list[str]) -> str | None:
    """None if the policy lets the line run, else a message naming the rule that refuses it."""
    if allow is None and not deny:
        return None
    try:
        commands = simple_commands(command_line)
    except CommandParseError as exc:
        return f"refused by policy: the command line cannot be checked ({exc})"
    for words in commands:
        for rule in deny:
            if _matches(rule, words, adjacent=False):
                return f"refused by policy [commands] deny rule {rule!r}: {_shorten(' '.join(words))}"
        if allow is not None and not any(_matches(rule, words, adjacent=True) for rule in allow):
            allowed = ", ".join(allow) or "nothing"
            return f"refused by policy [commands] allow list: {_refused_name(words, allow)!r} is not allowed (allowed: {allowed})"
    return None


def allowed_by_both(first: list[str] | None, second: list[str] | None) -> list[str] | None:
    """An allow list that lets through only what both lists let through (None: every command).

    Two rules overlap when one's further words start the other's and their names can be the same
    command; the overlap is the longer rule under the literal name. Two different globs are taken
    not to overlap: erring on the strict side, like everything here."""
    if first is None or second is None:
        return second if first is None else first
    both: list[str] = []
    for a, b in ((a.split(), b.split()) for a in first for b in second):
        shorter, longer = sorted((a[1:], b[1:]), key=len)
        name = _common_name(a[0], b[0])
        if name is not None and longer[: len(shorter)] == shorter:
            both.append(" ".join([name, *longer]))
    return list(dict.fromkeys(both))


def _common_name(a: str, b: str) -> str | None:
    """The name pattern of the commands both name patterns match, when it is one of them."""
    if _name(a) == _name(b):
        return _name(a)
    for literal, pattern in ((a, b), (b, a)):
        if not _is_glob(literal) and _name_matches(pattern, literal):
            return _name(literal)
    return None


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def _name(word: str) -> str:
    return word.rsplit("/", 1)[-1]


def _name_matches(pattern: str, word: str) -> bool:
    return bool(pattern) and fnmatch.fnmatchcase(_name(word), _name(pattern))


def _matches(rule: str, words: list[str], *, adjacent: bool) -> bool:
    first, *rest = rule.split() or [""]
    if not _name_matches(first, words[0]):
        return False
    args = words[1:]
    if adjacent:
        return args[: len(rest)] == rest
    remaining = iter(args)
    return all(any(arg == word for arg in remaining) for word in rest)  # in order, gaps allowed


def _refused_name(words: list[str], allow: list[str]) -> str:
    """The command's name, with as many arguments as the allow rules for that name have."""
    lengths = [len(rule.split()) for rule in allow if rule.split() and _name_matches(rule.split()[0], words[0])]
    return " ".join([_name(words[0]), *words[1 : max(lengths, default=1)]])


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- reading bash ---------------------------------------------------------------------------------------------


class _Shell:
    """A single-pass reader of one bash command line: tokens on demand, commands collected as they end."""

    def __init__(self, source: str, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise CommandParseError("nested too deeply")
        self.s = source
        self.i = 0
        self.depth = depth
        self.found: list[list[str]] = []
        self.heredocs: list[tuple[str, bool, bool]] = []  # (delimiter, quoted, strip leading tabs)
        self.pushed: _Token | None = None

    def commands(self) -> list[list[str]]:
        self._parse(closer=False)
        return self.found

    # -- commands --

    def _parse(self, *, closer: bool) -> None:
        """Read commands up to the end, or (closer) up to the ')' that ends a `$(` or `<(`."""
        words: list[str] = []
        # What the next words are when not a command: 'header' (`for x in a b`), 'name' (after `function`),
        # 'subject' and 'in' (after `case`), 'pattern' (a case pattern, up to ')'), '[[' (up to ']]').
        mode: str | None = None
        cases = 0  # open `case` statements
        parens = 0  # open subshells in this list
        after_time = False

        def finish() -> None:
            nonlocal words, after_time
            if words:
                self.found.extend(_with_wrapped(words, self.depth))
            words, after_time = [], False

        while True:
            token = self._next()
            if token is None:
                if closer or parens:
                    raise CommandParseError("unbalanced parenthesis")
                finish()
                return
            if mode == "[[":
                if isinstance(token, _Word) and token.text == "]]" and not token.quoted:
                    mode = None
                continue
            if isinstance(token, _Op):
                op = token.op
                if op in _REDIRECTIONS:
                    self._redirection(op)
                elif mode == "pattern":  # `a|b)`, and the optional '(' before it, belong to the pattern
                    mode = None if op == ")" else mode
                elif op in _SEPARATORS:
                    finish()
                    if mode == "header" and op in (";", "\n"):
                        mode = None
                    if op in (";;", ";&", ";;&") and cases:
                        mode = "pattern"
                elif op == "(":
                    if not words and self._arithmetic_command():  # `(( i++ ))`, `for ((...))`
                        continue
                    if len(words) == 1 and self._peek() == ")":  # `name() { ...; }` defines, not runs
                        self._next()
                        words = []
                        continue
                    finish()
                    parens += 1
                else:  # ')'
                    finish()
                    if parens:
                        parens -= 1
                    elif closer:
                        return
                    else:
                        raise CommandParseError("unbalanced parenthesis")
                continue

            text, bare = token.text, not token.quoted
            if mode is not None:
                if mode == "pattern" and bare and text == "esac":
                    cases -= 1
                    mode = None
                elif mode == "header" and bare and text == "do":
                    mode = None
                elif mode in ("name", "subject", "in"):
                    mode = {"name": None, "subject": "in", "in": "pattern"}[mode]
                continue
            if words:
                words.append(text)
                continue
            # The command's first word: keywords, assignments and `time -p` are not its name.
            if bare and text in KEYWORDS:
                if text == "esac" and cases:
                    cases -= 1
            elif bare and text == "time":
                after_time = True
            elif after_time and text.startswith("-"):
                pass
            elif bare and text in ("for", "select"):
                mode = "header"
            elif bare and text == "case":
                cases += 1
                mode = "subject"
            elif bare and text == "function":
                mode = "name"
            elif bare and text == "[[":
                mode = "[["
            elif not _ASSIGNMENT.match(token.raw):
                words.append(text)
                after_time = False

    def _redirection(self, op: str) -> None:
        target = self._next()
        if not isinstance(target, _Word):
            self.pushed = target
            return
        if op in ("<<", "<<-"):
            self.heredocs.append((target.text, target.quoted, op == "<<-"))

    def _arithmetic_command(self) -> bool:
        """After '(' with another '(' right behind it: an arithmetic command if it closes with '))'."""
        if self._peek(skip_space=False) != "(":
            return False
        start, found = self.i, len(self.found)
        self.i += 1
        if self._arithmetic():
            return True
        self.i, self.found[found:] = start, []
        return False

    # -- tokens --

    def _peek(self, *, skip_space: bool = True) -> str:
        i = self.i
        while skip_space and i < len(self.s) and self.s[i] in " \t":
            i += 1
        return self.s[i] if i < len(self.s) else ""

    def _next(self) -> _Token | None:
        if self.pushed is not None:
            token, self.pushed = self.pushed, None
            return token
        s = self.s
        while self.i < len(s):
            c = s[self.i]
            if c in " \t":
                self.i += 1
            elif s.startswith("\\\n", self.i):  # line continuation
                self.i += 2
            elif c == "#":  # a comment, up to the newline
                end = s.find("\n", self.i)
                self.i = len(s) if end == -1 else end
            elif c == "\n":
                self.i += 1
                self._heredoc_bodies()
                return _Op("\n")
            elif c in ";&|()<>" and not (c in "<>" and s.startswith("(", self.i + 1)):
                return _Op(self._operator())
            else:
                word = self._word()
                if not word.quoted and _FD_PREFIX.fullmatch(word.raw) and s[self.i : self.i + 1] in ("<", ">") and s[self.i + 1 : self.i + 2] != "(":
                    return _Op(self._operator())  # `2>&1`: the fd belongs to the redirection
                return word
        return None

    def _operator(self) -> str:
        op = next(op for op in _OPERATORS if self.s.startswith(op, self.i))
        self.i += len(op)
        return op

    def _word(self) -> _Word:
        s, start, out, quoted = self.s, self.i, [], False
        while self.i < len(s):
            c = s[self.i]
            if c in " \t\n":
                break
            if c in "<>" and s.startswith("(", self.i + 1):  # process substitution
                sub = self.i
                self.i += 2
                self._parse_nested()
                out.append(s[sub : self.i])
            elif c == "(" and not quoted and _ASSIGNMENT.fullmatch("".join(out)):  # arr=(a b c)
                self.i += 1
                while (token := self._next()) != _Op(")"):
                    if token is None:
                        raise CommandParseError("unbalanced parenthesis")
                out.append("(...)")
            elif c in ";&|()<>":
                break
            elif c == "\\":
                if s.startswith("\n", self.i + 1):
                    self.i += 2
                    continue
                out.append(s[self.i + 1 : self.i + 2])
                self.i += 2
                quoted = True
            elif c == "'":
                end = s.find("'", self.i + 1)
                if end == -1:
                    raise CommandParseError("unbalanced quote")
                out.append(s[self.i + 1 : end])
                self.i = end + 1
                quoted = True
            elif c == '"':
                self.i += 1
                out.append(self._double_quoted(terminated=True))
                quoted = True
            elif c == "$" and s.startswith("'", self.i + 1):
                self.i += 2
                out.append(self._ansi_c())
                quoted = True
            elif c == "$" and s.startswith('"', self.i + 1):
                self.i += 2
                out.append(self._double_quoted(terminated=True))
                quoted = True
            elif c in "$`":
                out.append(self._expansion())
            else:
                out.append(c)
                self.i += 1
        return _Word("".join(out), s[start : self.i], quoted)

    def _double_quoted(self, *, terminated: bool) -> str:
        """From after the opening '"' through the closing one (or, for here-documents, to the end)."""
        s, out = self.s, list[str]()
        while self.i < len(s):
            c = s[self.i]
            if c == '"' and terminated:
                self.i += 1
                return "".join(out)
            if c == "\\" and s[self.i + 1 : self.i + 2] in ("$", "`", '"', "\\", "\n"):
                out.append("" if s[self.i + 1] == "\n" else s[self.i + 1])
                self.i += 2
            elif c in "$`":
                out.append(self._expansion(in_quotes=True))
            else:
                out.append(c)
                self.i += 1
        if terminated:
            raise CommandParseError("unbalanced quote")
        return "".join(out)

    def _ansi_c(self) -> str:
        r"""$'...' from after the quote: backslash escapes decoded (so $'\x63url' is curl)."""
        s, start = self.s, self.i
        while self.i < len(s) and s[self.i] != "'":
            self.i += 2 if s[self.i] == "\\" else 1
        if self.i >= len(s):
            raise CommandParseError("unbalanced quote")
        body = s[start : self.i]
        self.i += 1
        try:
            return body.encode("latin-1", "backslashreplace").decode("unicode_escape")
        except UnicodeDecodeError:
            return body

    def _expansion(self, *, in_quotes: bool = False) -> str:
        """A `$...` or backtick expansion at self.i: commands inside are collected; returns it as written."""
        s, start = self.s, self.i
        if s[self.i] == "`":
            self._backticks()
        elif s.startswith("$((", self.i):
            found = len(self.found)
            self.i += 3
            if not self._arithmetic():  # `$((a) )`: a command substitution holding a subshell
                self.i, self.found[found:] = start + 2, []
                self._parse_nested()
        elif s.startswith("$(", self.i):
            self.i += 2
            self._parse_nested()
        elif s.startswith("${", self.i):
            self.i += 2
            self._parameter(in_quotes)
        else:
            self.i += 1
        return s[start : self.i]

    def _parse_nested(self) -> None:
        """The commands of a `$(`/`<(`/`>(` from after its '(' through its ')'."""
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise CommandParseError("nested too deeply")
        heredocs, self.heredocs = self.heredocs, []
        self._parse(closer=True)
        self.heredocs = heredocs + self.heredocs
        self.depth -= 1

    def _backticks(self) -> None:
        s, out = self.s, []
        self.i += 1
        while self.i < len(s) and s[self.i] != "`":
            if s[self.i] == "\\" and s[self.i + 1 : self.i + 2] in ("$", "`", "\\"):
                self.i += 1
            out.append(s[self.i])
            self.i += 1
        if self.i >= len(s):
            raise CommandParseError("unbalanced backquote")
        self.i += 1
        self.found.extend(_Shell("".join(out), self.depth + 1).commands())

    def _arithmetic(self) -> bool:
        """From after `((`: through the matching `))`; False if the parentheses close otherwise."""
        s, depth = self.s, 2
        while self.i < len(s):
            c = s[self.i]
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
                if depth == 1 and not s.startswith(")", self.i + 1):
                    return False
                if depth == 0:
                    self.i += 1
                    return True
            elif c in "$`":
                self._expansion()
                continue
            self.i += 1
        return False

    def _parameter(self, in_quotes: bool) -> None:
        """`${...}` from after the brace: nested expansions are read, so `${x:-$(cmd)}` counts."""
        s = self.s
        while self.i < len(s):
            c = s[self.i]
            if c == "}":
                self.i += 1
                return
            if c == "\\":
                self.i += 2
            elif c == "'" and not in_quotes:  # inside "...", a single quote is just a character
                end = s.find("'", self.i + 1)
                if end == -1:
                    raise CommandParseError("unbalanced quote")
                self.i = end + 1
            elif c == '"':
                self.i += 1
                self._double_quoted(terminated=True)
            elif c in "$`":
                self._expansion(in_quotes=in_quotes)
            else:
                self.i += 1
        raise CommandParseError("unbalanced brace")

    def _heredoc_bodies(self) -> None:
        """At a newline after `<<WORD`: skip each body; unquoted ones still expand `$(...)`."""
        pending, self.heredocs = self.heredocs, []
        s = self.s
        for delimiter, quoted, strip_tabs in pending:
            body_start = line_start = self.i
            while self.i < len(s):
                line_start, end = self.i, s.find("\n", self.i)
                end = len(s) if end == -1 else end
                self.i = min(end + 1, len(s))
                if (s[line_start:end].lstrip("\t") if strip_tabs else s[line_start:end]) == delimiter:
                    break
            else:
                line_start = len(s)  # no closing delimiter: bash reads the body to the end
            body = s[body_start:line_start]
            if not quoted:
                nested = _Shell(body, self.depth + 1)
                nested._double_quoted(terminated=False)
                self.found.extend(nested.found)


# --- commands that run other commands -------------------------------------------------------------------------

_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "ash", "mksh"})
# wrapper -> (options that take a value, whether NAME=value words may precede the command)
_WRAPPERS: dict[str, tuple[frozenset[str], bool]] = {
    "sudo": (frozenset({"-u", "-g", "-h", "-p", "-C", "-D", "-r", "-t", "-T", "-U", "--user", "--group", "--host", "--prompt", "--chdir"}), True),
    "doas": (frozenset({"-u", "-C"}), False),
    "env": (frozenset({"-u", "-C", "--unset", "--chdir"}), True),
    "exec": (frozenset({"-a"}), False),
    "command": (frozenset(), False),
    "builtin": (frozenset(), False),
    "nohup": (frozenset(), False),
    "setsid": (frozenset(), False),
    "nice": (frozenset({"-n", "--adjustment"}), False),
    "ionice": (frozenset({"-c", "-n", "-p", "-P", "-u", "--class", "--classdata"}), False),
    "stdbuf": (frozenset({"-i", "-o", "-e", "--input", "--output", "--error"}), False),
    "time": (frozenset({"-f", "-o", "--format", "--output"}), False),
    "timeout": (frozenset({"-s", "-k", "--signal", "--kill-after"}), False),
    "xargs": (frozenset({
        "-a", "-d", "-E", "-I", "-L", "-n", "-P", "-s",
        "--arg-file", "--delimiter", "--max-lines", "--max-args", "--max-procs", "--max-chars", "--process-slot-var",
    }), False),
    "flock": (frozenset({"-w", "-E", "--timeout", "--conflict-exit-code"}), False),
}  # fmt: skip


def _with_wrapped(words: list[str], depth: int) -> list[list[str]]:
    """The command, then whatever it runs in turn: wrapped commands and `sh -c`/`eval` strings."""
    commands = [words]
    for inner in _wrapped(words):
        if isinstance(inner, str):
            commands.extend(_Shell(inner, depth + 1).commands())
        elif inner:
            commands.extend(_with_wrapped(inner, depth + 1))
    return commands


def _wrapped(words: list[str]) -> list[list[str] | str]:
    name, args = _name(words[0]), words[1:]
    if name in _SHELLS:
        return _shell_string(args)
    if name == "eval":
        return [" ".join(args)]
    if name in ("su", "runuser"):
        return _option_string(args, ("-c", "--command"))
    if name == "watch":  # runs its arguments with `sh -c`
        return [" ".join(_skip_options(args, frozenset({"-n", "--interval"})))]
    if name == "find":
        return _find_exec(args)
    if name == "env" and (split := _option_string(args, ("-S", "--split-string"))):
        return split
    if name not in _WRAPPERS:
        return []
    with_value, assignments = _WRAPPERS[name]
    rest = _skip_options(args, with_value)
    while assignments and rest and _ASSIGNMENT.match(rest[0]):
        rest = rest[1:]
    if name == "timeout" and rest:
        rest = rest[1:]  # the duration
    if name == "flock" and rest:
        rest = rest[1:]  # the lock file
        if rest[:1] in (["-c"], ["--command"]):
            return list(rest[1:2])
    return [rest]


def _skip_options(args: list[str], with_value: frozenset[str]) -> list[str]:
    """The arguments after the leading options (`--` ends them; `-n 5`, `--max-args=5`, `-n5` all skip)."""
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "-":
        if args[i] == "--":
            return args[i + 1 :]
        i += 2 if args[i] in with_value else 1
    return args[i:]


def _shell_string(args: list[str]) -> list[list[str] | str]:
    """`bash -c 'STRING'`, `sh -ec 'STRING'`: the string is a command line; `bash script.sh` is opaque."""
    i, has_c = 0, False
    while i < len(args) and args[i][:1] in ("-", "+") and args[i] not in ("-", "--"):
        option = args[i]
        if option in ("-o", "+o", "-O", "+O", "--rcfile", "--init-file"):
            i += 1
        elif not option.startswith("--") and "c" in option[1:]:
            has_c = True
        i += 1
    return [args[i]] if has_c and i < len(args) else []


def _option_string(args: list[str], options: tuple[str, ...]) -> list[list[str] | str]:
    for i, arg in enumerate(args):
        if arg in options and i + 1 < len(args):
            return [args[i + 1]]
        for option in options:
            if option.startswith("--") and arg.startswith(option + "="):
                return [arg[len(option) + 1 :]]
    return []


def _find_exec(args: list[str]) -> list[list[str] | str]:
    """`find ... -exec CMD {} ;` (also -execdir, -ok, -okdir): each CMD is a command."""
    found: list[list[str] | str] = []
    i = 0
    while i < len(args):
        if args[i] in ("-exec", "-execdir", "-ok", "-okdir"):
            end = i + 1
            while end < len(args) and args[end] not in (";", "+"):
                end += 1
            found.append(args[i + 1 : end])
            i = end
        i += 1
    return found
