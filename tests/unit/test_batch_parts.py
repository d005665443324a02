"""The pieces of `airlock batch` on their own (no Docker): the shared backoff, the scripted model's routing,
git URL handling, the scheduler's rules and the live board."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from rich.console import Console

from orchestrator.batch.progress import BatchDisplay, Overview, Row
from orchestrator.batch.repo_source import check_ref, is_url, protocol_of, redact, url_basename
from orchestrator.batch.scheduler import Batch, BatchOptions
from orchestrator.batch.tasks import BatchTask
from orchestrator.providers.backoff import DEFAULT_WAIT_S, MAX_WAIT_S, SharedBackoff, retry_after
from orchestrator.providers.scripted import ScriptedModelServer, reply, text


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.slept: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Response:
    def __init__(self, status_code: int, headers: dict[str, str]) -> None:
        self.status_code, self.headers = status_code, headers


def test_retry_after_headers() -> None:
    assert retry_after({"retry-after-ms": "1500", "retry-after": "9"}, 0) == 1.5  # ms first, as the SDK reads them
    assert retry_after({"retry-after": "2"}, 0) == 2.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, 1445412480.0) == 10.0
    assert retry_after({}, 0) == DEFAULT_WAIT_S
    assert retry_after({"retry-after": "999999"}, 0) == MAX_WAIT_S


def test_shared_backoff_keeps_the_later_deadline_and_makes_every_request_wait(tmp_path: Path) -> None:
    clock = FakeClock()
    first = SharedBackoff(tmp_path / "rate-limit", clock=clock.time, sleep=clock.sleep)
    other = SharedBackoff(tmp_path / "rate-limit", clock=clock.time, sleep=clock.sleep)  # another process, same file
    assert other.remaining() == 0 and other.wait() == 0 and clock.slept == []
    first.on_response(Response(200, {"retry-after": "30"}))
    assert first.deadline() is None  # only a 429 pushes the deadline
    first.on_response(Response(429, {"retry-after": "5"}))
    other.on_response(Response(429, {"retry-after": "2"}))  # earlier than the one in the file: kept as it is
    assert other.remaining() == 5.0
    assert other.wait() == pytest.approx(5.0) and clock.now == pytest.approx(1_000_005.0)
    assert max(clock.slept) <= 0.5  # re-reads the file while waiting
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_scripted_model_routes_concurrent_tasks_by_marker() -> None:
    scripts = {"[task-1]": [reply(text("one"))], "[task-12]": [reply(text("twelve"))]}

    def ask(api: ScriptedModelServer, task: str) -> tuple[int, dict]:
        body = json.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text", "text": task}]}]})
        request = urllib.request.Request(f"{api.base_url}/v1/messages", data=body.encode(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    with ScriptedModelServer(scripts) as api:
        assert ask(api, "Fix it [task-12]")[1]["content"][0]["text"] == "twelve"  # the longest marker wins
        assert ask(api, "Fix it [task-1]")[1]["content"][0]["text"] == "one"
        status, error = ask(api, "Fix it [task-3]")
        assert status == 400 and "no script" in error["error"]["message"]
    assert api.markers == ["[task-12]", "[task-1]", None]
    assert [body["messages"][0]["content"][0]["text"] for _, body in api.for_marker("[task-1]")] == ["Fix it [task-1]"]
    assert api.times == sorted(api.times)


@pytest.mark.parametrize(
    ("repo", "url", "protocol", "name"),
    [
        ("https://example.com/org/widget.git", True, "https", "widget"),
        ("file:///srv/git/tool/", True, "file", "tool"),
        ("git@example.com:org/gadget.git", True, "ssh", "gadget"),
        ("ssh+git://example.com/x/y", True, "ssh", "y"),
        ("ext::sh -c evil", True, "ext", None),
        ("repos/alpha", False, None, None),
        ("/abs/path/repo", False, None, None),
    ],
)
def test_git_urls(repo: str, url: bool, protocol: str | None, name: str | None) -> None:
    assert is_url(repo) is url
    if url:
        assert protocol_of(repo) == protocol
    if name:
        assert url_basename(repo) == name


def test_credentials_never_leave_a_url_and_unsafe_refs_are_refused() -> None:
    assert redact("https://user:s3cret@example.com:8443/org/x.git") == "https://***@example.com:8443/org/x.git"
    assert redact("https://ghp_token@example.com/org/x.git") == "https://***@example.com/org/x.git"
    assert redact("ssh://git@example.com/org/x.git") == "ssh://git@example.com/org/x.git"  # a user name, not a secret
    assert check_ref("v1.2") is None and check_ref("feature/x") is None and check_ref("0123abcd") is None
    assert check_ref("--upload-pack=evil") and check_ref("a b") and check_ref("HEAD~1") and check_ref("a..b")


def test_no_task_starts_while_the_api_asks_to_wait(tmp_path: Path) -> None:
    task = BatchTask(id="t", line=1, repo=str(tmp_path), task="x", model="m", path=tmp_path)
    batch = Batch([task], BatchOptions(out=tmp_path / "out"), Console(file=io.StringIO()))
    batch.backoff = SharedBackoff(tmp_path / "rate-limit")
    batch.backoff.push(30)
    batch._start_more()
    assert batch.jobs[0].state == "queued" and batch.jobs[0].proc is None
    assert "rate limited by the API (429): no new task starts for" in batch.console.file.getvalue()  # type: ignore[attr-defined]


def test_live_board_shows_totals_and_a_row_per_running_task() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=120, color_system=None)
    view = Overview(
        total=6, finished=2, failed=1, skipped=1, running=2, queued=1, elapsed=65, eta=40, tokens=12_345, cost=0.0123, cost_unknown=True,
        backoff=3, rows=[Row("fix-3", "running", 4, "run_bash", 12, 2000, 0.004), Row("from-git", "cloning", 0, "", 2, 0, None)],
    )  # fmt: skip
    console.print(BatchDisplay(console, live=True).board(view))
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert "airlock batch  3/6 done, 1 failed, 1 skipped, 2 running, 1 queued" in shown
    assert "12,345 tokens · $0.0123 + unknown · 1m05s elapsed · ETA 0m40s" in shown
    assert "rate limited by the API: every task waits 3 s" in shown
    assert "fix-3" in shown and "run_bash" in shown and "from-git" in shown and "clone" in shown and "cost unknown" in shown


def test_a_task_of_several_attempts_is_checked_as_airlock_run_checks_them(tmp_path: Path) -> None:
    from orchestrator.batch.tasks import Defaults, load_tasks

    (tmp_path / "repo").mkdir()
    lines = [
        {"id": "verified", "repo": "repo", "task": "t", "verify": "pytest", "attempts": 3},
        {"id": "picked", "repo": "repo", "task": "t", "attempts": 2, "pick": "smallest"},
        {"id": "batch-wide", "repo": "repo", "task": "t"},
        {"id": "one", "repo": "repo", "task": "t", "attempts": 1},
        {"id": "no-rule", "repo": "repo", "task": "t", "attempts": 2, "pick": None},
        {"id": "pick-alone", "repo": "repo", "task": "t", "pick": "first", "attempts": 1},
        {"id": "both", "repo": "repo", "task": "t", "verify": "pytest", "attempts": 2, "pick": "first"},
        {"id": "unknown-pick", "repo": "repo", "task": "t", "attempts": 2, "pick": "best"},
        {"id": "zero", "repo": "repo", "task": "t", "attempts": 0},
    ]
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(line) + "\n" for line in lines))

    loaded = load_tasks(tasks, Defaults(attempts=4, pick="first"))
    by_id = {task.id: task for task in loaded.tasks}
    assert list(by_id) == ["verified", "picked", "batch-wide", "one", "no-rule"]  # no-rule takes the batch's --pick
    assert (by_id["verified"].attempts, by_id["verified"].pick) == (3, None)
    assert (by_id["picked"].attempts, by_id["picked"].pick) == (2, "smallest")
    assert (by_id["batch-wide"].attempts, by_id["batch-wide"].pick, by_id["one"].attempts) == (4, "first", 1)
    problems = "\n".join(loaded.problems)
    assert ':6: "pick" is for several attempts' in problems and ':7: "pick" is for attempts without a verify command' in problems
    assert (
        ":8: pick: input should be 'smallest', 'first' or 'none'" in problems.lower()
        and ":9: attempts: input should be greater than or equal to 1" in problems.lower()
    )

    options = by_id["verified"].run_options(tmp_path / "p.toml", slots=2)
    assert options[-4:] == ["--attempts", "3", "--jobs", "2"] and "--pick" not in options
    assert by_id["picked"].run_options(tmp_path / "p.toml", slots=2)[-6:] == ["--attempts", "2", "--jobs", "2", "--pick", "smallest"]
    assert "--attempts" not in by_id["one"].run_options(tmp_path / "p.toml")

    without_pick = load_tasks(tasks, Defaults())
    assert any(':5: "attempts" without a verify command needs "pick"' in problem for problem in without_pick.problems)
