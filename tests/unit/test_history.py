"""The sandbox's git history: real repos (made with our neutral git), rebuilt without hidden content.

Each shipped history is unpacked into a fresh git dir exactly as the sandbox gets it (the pack and the
small files of `.git`), and then searched with git itself for the secrets: in every object, every
commit's patch and every file shipped.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from orchestrator.history import History, _PackWriter, prepare_history
from orchestrator.patch.neutral_git import run_git
from orchestrator.policy.model import DEFAULT_HIDDEN

IDENTITY = ["-c", "user.name=dev", "-c", "user.email=dev@example.invalid"]
SECRET = b"AWS_SECRET=hunter2-in-history"
KEY = b"-----BEGIN PRIVATE KEY-----\nsecret-key-material\n"
TOKEN = "ghp_0123456789abcdefTOKEN"


def git(repo: Path, *args: str, git_dir: Path | None = None) -> bytes:
    proc = run_git(list(args), git_dir=git_dir or repo / ".git", work_tree=repo, cwd=repo)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def commit(repo: Path, message: str, files: dict[str, bytes | None]) -> str:
    for rel, data in files.items():
        path = repo / rel
        if data is None:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    git(repo, "add", "-A")
    git(repo, *IDENTITY, "commit", "--quiet", "-m", message)
    return git(repo, "rev-parse", "HEAD").decode().strip()


@pytest.fixture
def leaky_repo(tmp_path: Path) -> Path:
    """Secrets in the history (.env added, changed, deleted; a key still tracked), a token in a remote
    URL, a credential helper, a stash and reflogs: everything issue 10's red team found reachable."""
    repo = tmp_path / "leaky"
    repo.mkdir()
    git(repo, "init", "--quiet", "--template=", "--initial-branch=main")
    commit(repo, "start", {"app.py": b"print('v1')\n", ".env": SECRET + b"\n"})
    commit(repo, "config", {"app.py": b"print('v2')\n", ".env": SECRET + b"-rotated\n", "deploy/deploy.pem": KEY})
    commit(repo, "drop the env file", {".env": None, "README.md": b"readme\n"})
    for n in range(3, 6):
        commit(repo, f"work {n}", {"app.py": f"print('v{n}')\n".encode()})
    with open(repo / ".git" / "config", "a") as config:
        config.write(f'[remote "origin"]\n\turl = https://x-access-token:{TOKEN}@github.com/o/r.git\n[credential]\n\thelper = store\n')
    (repo / "app.py").write_bytes(b"print('stashed')\n" + SECRET + b"\n")
    git(repo, *IDENTITY, "stash", "--quiet")
    return repo


def unpack(history: History, into: Path) -> Path:
    """A git dir as the sandbox gets it: the small files of `.git`, and the pack in an objects folder beside."""
    assert history.pack is not None and history.index is not None
    git_dir, pack = into / ".git", into / "history" / "pack"
    pack.mkdir(parents=True)
    (git_dir / "refs").mkdir(parents=True)
    (git_dir / "objects").mkdir()
    shutil.copy(history.pack, pack / "pack-x.pack")
    shutil.copy(history.index, pack / "pack-x.idx")
    for rel, data in history.dot_git(alternate=str(into / "history")).items():
        (git_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (git_dir / rel).write_bytes(data)
    return git_dir


def everything(git_dir: Path) -> bytes:
    """Every object's content, every commit's full patch, and every file of the git dir."""
    objects = git(git_dir.parent, "cat-file", "--batch-all-objects", "--batch", git_dir=git_dir)
    patches = git(git_dir.parent, "log", "--all", "-p", "--binary", git_dir=git_dir)
    files = b"".join(path.read_bytes() for path in git_dir.rglob("*") if path.is_file())
    return objects + patches + files


def test_hidden_content_and_credentials_are_unreachable_in_the_full_history(leaky_repo: Path, tmp_path: Path) -> None:
    history = prepare_history(leaky_repo, None, DEFAULT_HIDDEN, cache=tmp_path / "cache")
    assert history.pack is not None, history.why
    shipped = everything(unpack(history, tmp_path / "sandbox"))
    for secret in (SECRET, b"secret-key-material", TOKEN.encode(), b"stashed", b"credential", b"origin"):
        assert secret not in shipped, secret
    # The rest of the history is all there: six commits, each with its message, and the files that are not hidden.
    log = git(tmp_path / "sandbox", "log", "--format=%s", git_dir=tmp_path / "sandbox" / ".git").decode().split("\n")
    assert log[:6] == ["work 5", "work 4", "work 3", "drop the env file", "config", "start"]
    assert history.commits == 6 and history.rewritten == 6 and history.shallow == []
    assert history.hidden_count == 2 and history.hidden == [".env", "deploy/deploy.pem"]
    show = git(tmp_path / "sandbox", "show", "HEAD~4:app.py", git_dir=tmp_path / "sandbox" / ".git")
    assert show == b"print('v2')\n"
    assert history.branch == "main" and history.head != git(leaky_repo, "rev-parse", "HEAD").decode().strip()  # rewritten: a new id
    git(tmp_path / "sandbox", "fsck", "--strict", "--no-dangling", git_dir=tmp_path / "sandbox" / ".git")  # the rewrite is a valid repository


def test_a_rewrite_written_as_many_packs_is_the_same_history(leaky_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rewritten commits and trees go to git in packs of a bounded size; where a pack ends changes nothing."""
    whole = prepare_history(leaky_repo, None, DEFAULT_HIDDEN, cache=tmp_path / "one")
    packs: list[int] = []
    flush = _PackWriter.flush
    monkeypatch.setattr(_PackWriter, "LIMIT", 1)  # every object a pack of its own
    monkeypatch.setattr(_PackWriter, "flush", lambda self: (packs.append(len(self._pending)), flush(self))[1])
    spread = prepare_history(leaky_repo, None, DEFAULT_HIDDEN, cache=tmp_path / "many")
    assert spread.head == whole.head and spread.rewritten == 6
    assert len([n for n in packs if n]) > 6 and max(packs) == 1
    git_dir = unpack(spread, tmp_path / "sandbox")
    git(tmp_path / "sandbox", "fsck", "--strict", "--no-dangling", git_dir=git_dir)
    assert SECRET not in everything(git_dir) and b"secret-key-material" not in everything(git_dir)


def test_a_history_without_hidden_paths_keeps_every_commit_id(leaky_repo: Path, tmp_path: Path) -> None:
    original = git(leaky_repo, "rev-list", "HEAD").decode().split()
    history = prepare_history(leaky_repo, None, [], cache=tmp_path / "cache")
    git_dir = unpack(history, tmp_path / "sandbox")
    assert git(tmp_path / "sandbox", "rev-list", "HEAD", git_dir=git_dir).decode().split() == original
    assert history.rewritten == 0 and history.head == original[0]
    git(tmp_path / "sandbox", "fsck", "--strict", "--no-dangling", git_dir=git_dir)  # a complete, valid repository


def test_recent_history_is_shallow_like_a_clone_of_that_depth(leaky_repo: Path, tmp_path: Path) -> None:
    history = prepare_history(leaky_repo, 2, DEFAULT_HIDDEN, cache=tmp_path / "cache")
    git_dir = unpack(history, tmp_path / "sandbox")
    listed = git(tmp_path / "sandbox", "log", "--format=%s", git_dir=git_dir).decode().split()
    assert listed == ["work", "5", "work", "4"]
    assert history.commits == 2 and len(history.shallow) == 1
    assert (git_dir / "shallow").read_text().strip() == history.shallow[0]
    git(tmp_path / "sandbox", "fsck", "--no-dangling", git_dir=git_dir)
    assert "the last 2 commits" in history.describe() and "branch main" in history.describe()


def test_merges_count_generations_by_the_shortest_way(tmp_path: Path) -> None:
    """Depth is counted as `git clone --depth` counts it: both sides of a merge, to the same depth."""
    repo = tmp_path / "merges"
    repo.mkdir()
    git(repo, "init", "--quiet", "--template=", "--initial-branch=main")
    commit(repo, "root", {"a": b"0\n"})
    git(repo, "checkout", "--quiet", "-b", "side")
    commit(repo, "side 1", {"b": b"1\n"})
    commit(repo, "side 2", {"b": b"2\n"})
    git(repo, "checkout", "--quiet", "main")
    commit(repo, "main 1", {"a": b"1\n"})
    git(repo, *IDENTITY, "merge", "--quiet", "--no-edit", "side")
    history = prepare_history(repo, 2, [], cache=tmp_path / "cache")
    listed = git(tmp_path / "sandbox", "log", "--format=%s", git_dir=unpack(history, tmp_path / "sandbox"))
    assert sorted(listed.decode().splitlines()) == ["Merge branch 'side'", "main 1", "side 2"]
    assert history.commits == 3 and len(history.shallow) == 2


def test_a_history_shallower_than_asked_is_shipped_whole(leaky_repo: Path, tmp_path: Path) -> None:
    history = prepare_history(leaky_repo, 50, [], cache=tmp_path / "cache")
    assert history.commits == 6 and history.shallow == []
    assert "the full history" in history.describe()


@pytest.mark.parametrize(
    ("arrange", "why"),
    [
        (lambda repo: shutil.rmtree(repo / ".git"), "not a git repository"),
        (lambda repo: (shutil.rmtree(repo / ".git"), (repo / ".git").write_text("gitdir: /elsewhere/.git\n")), "a link or a file pointing elsewhere"),
        (lambda repo: (repo / ".git" / "objects" / "info" / "alternates").write_text("/other/repo/objects\n"), "borrowed from another repository"),
        (lambda repo: (repo / ".git" / "HEAD").write_text("ref: refs/heads/unborn\n"), "no commits yet"),
    ],
    ids=["no-git", "gitdir-file", "alternates", "unborn"],
)
def test_a_history_that_cannot_be_made_safely_is_none_and_says_why(leaky_repo: Path, tmp_path: Path, arrange, why: str) -> None:
    arrange(leaky_repo)
    history = prepare_history(leaky_repo, 50, DEFAULT_HIDDEN, cache=tmp_path / "cache")
    assert history.pack is None and why in history.why
    assert history.describe().startswith("no git history in the sandbox: ")


def test_none_ships_nothing(leaky_repo: Path, tmp_path: Path) -> None:
    history = prepare_history(leaky_repo, 0, DEFAULT_HIDDEN, cache=tmp_path / "cache")
    assert history.pack is None and "none was chosen" in history.why
    assert not (tmp_path / "cache").exists()


def test_packs_are_made_once_per_commit_depth_and_hidden_globs(leaky_repo: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = prepare_history(leaky_repo, 3, DEFAULT_HIDDEN, cache=cache)
    again = prepare_history(leaky_repo, 3, DEFAULT_HIDDEN, cache=cache)
    assert again.pack == first.pack and again.head == first.head
    looser = prepare_history(leaky_repo, 3, [], cache=cache)
    assert looser.pack != first.pack and looser.rewritten == 0  # another policy never reuses a pack made under this one
    commit(leaky_repo, "newer", {"app.py": b"print('v9')\n"})
    newer = prepare_history(leaky_repo, 3, DEFAULT_HIDDEN, cache=cache)
    assert newer.pack != first.pack
    assert len([entry for entry in cache.iterdir() if entry.is_dir()]) == 3
