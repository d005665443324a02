"""What a setup may read: requirements files followed to every file they include, local paths that need the
whole repo, references that leave it, npm's workspaces and install scripts, and the whole-tree digest."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.run.detect import EDITABLE_LATER, detect, static_requirements
from orchestrator.run.setup_inputs import UnsafeReference, gather, references, tree_digest
from orchestrator.sandbox.repo_tar import scan_repo


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_requirement_lines_name_included_files_and_local_paths() -> None:
    text = (
        "-r base.txt\n--requirement=more/dev.txt\n-c constraints.txt  # pinned\n-rtight.txt\n"
        "--index-url https://pypi.org/simple\nrequests>=2 ; python_version > '3.8'\n"
        "-e .\n-e git+https://example.org/x.git#egg=x\n./plugins/fake\nlocal @ file:///src/pkg\n"
        "-f ./wheels\n-f https://example.org/wheels\n# -r commented.txt\nlong \\\n  -r not-an-option.txt\n"
        "-r https://example.org/remote.txt\n"
    )
    includes, local = references(text)
    assert includes == ["base.txt", "more/dev.txt", "constraints.txt", "tight.txt"]
    assert local == [".", "./plugins/fake", "file:///src/pkg", "./wheels"]


def test_nested_requirements_files_are_followed_and_keyed(tmp_path: Path) -> None:
    repo = write(tmp_path, {
        "requirements.txt": "-r requirements/test.txt\n", "requirements/test.txt": "-c ../constraints/pins.txt\n-r common.txt\npytest\n",
        "requirements/common.txt": "-r test.txt\nrequests\n", "constraints/pins.txt": "requests==2.32.0\n", "src/app.py": "print()\n",
    })  # fmt: skip
    inputs = gather(repo, [])
    assert list(inputs.files) == ["constraints/pins.txt", "requirements.txt", "requirements/common.txt", "requirements/test.txt"]
    assert inputs.whole_repo is None and inputs.repo_code is None
    assert inputs.record(repo_files=5) == {"mode": "manifests", "files": 4, "why": None, "repo_code": None}


@pytest.mark.parametrize("reference", ["-r ../../outside.txt", "-r /etc/passwd", "-c ../../x.txt", "../sibling-project", "-e /opt/pkg", "-r ~/x.txt"])
def test_a_reference_outside_the_repo_is_refused(tmp_path: Path, reference: str) -> None:
    repo = write(tmp_path / "repo", {"requirements.txt": "-r nested/r.txt\n", "nested/r.txt": f"{reference}\n"})
    with pytest.raises(UnsafeReference, match=r"^nested/r.txt refers to .*outside the repo"):
        gather(repo, [])


def test_an_included_file_behind_a_symlink_or_hidden_is_not_read(tmp_path: Path) -> None:
    outside = write(tmp_path / "outside", {"secret.txt": "token\n"})
    repo = write(tmp_path / "repo", {"requirements.txt": "-r linked/secret.txt\n-r hidden.txt\n", "hidden.txt": "x\n"})
    (repo / "linked").symlink_to(outside)
    assert list(gather(repo, [], hidden=["hidden.txt"]).files) == ["requirements.txt"]


def test_a_local_path_or_the_project_itself_needs_the_whole_repo(tmp_path: Path) -> None:
    repo = write(tmp_path, {"requirements.txt": "-r requirements/test.txt\n", "requirements/test.txt": "./plugin\n", "plugin/setup.py": ""})
    inputs = gather(repo, [])
    assert inputs.whole_repo == "requirements/test.txt installs from the repo's own files (./plugin)"
    assert inputs.repo_code == inputs.whole_repo
    assert gather(repo, [], whole_repo="given").whole_repo == "given"


def test_npm_install_scripts_bind_the_environment_and_workspaces_need_the_repo(tmp_path: Path) -> None:
    plain = write(tmp_path / "plain", {"package.json": '{"scripts": {"test": "node t.js"}}', "package-lock.json": "{}"})
    assert gather(plain, []).repo_code is None and gather(plain, []).whole_repo is None
    scripted = write(tmp_path / "scripted", {"package.json": '{"scripts": {"postinstall": "node evil.js", "prepare": "x"}}'})
    assert gather(scripted, []).repo_code == "package.json's postinstall, prepare scripts run during the install"
    assert gather(scripted, []).whole_repo is None
    workspaces = write(tmp_path / "ws", {"package.json": '{"workspaces": ["packages/*"]}'})
    assert "workspaces" in (gather(workspaces, []).whole_repo or "")


def test_the_tree_digest_changes_with_any_file_mode_or_link(tmp_path: Path) -> None:
    repo = write(tmp_path, {"a.py": "x = 1\n", "sub/b.txt": "b\n"})

    def digest() -> str:
        return tree_digest(scan_repo(repo))

    first = digest()
    assert digest() == first
    (repo / "sub" / "b.txt").write_text("c\n")
    second = digest()
    (repo / "a.py").chmod(0o755)
    third = digest()
    (repo / "link").symlink_to("a.py")
    assert len({first, second, third, digest()}) == 4


def test_static_pyproject_metadata_gives_every_requirement_with_the_projects_own_extras_expanded() -> None:
    pyproject = b"""
[build-system]
requires = ["hatchling>=1.20"]
build-backend = "hatchling.build"
[project]
name = "My_Project"
dynamic = ["version"]
dependencies = ["httpcore==1.*", "idna"]
[project.optional-dependencies]
test = ["pytest>=8", "my-project[brotli,http2]"]
brotli = ["brotli"]
http2 = ["h2>=3,<5", "idna"]
docs = ["sphinx"]
"""
    assert static_requirements(pyproject, ["test"]) == ["hatchling>=1.20", "httpcore==1.*", "idna", "pytest>=8", "brotli", "h2>=3,<5"]
    assert static_requirements(b'[project]\nname = "x"\n', []) == ["setuptools>=64", "wheel"]  # setuptools' defaults


@pytest.mark.parametrize(
    "pyproject",
    [b'[project]\nname = "x"\ndynamic = ["dependencies"]\n', b"[tool.poetry]\nname = 'x'\n", b"not toml [", b'[project]\nname = "x"\ndependencies = "a"\n'],
)
def test_dependencies_that_are_not_static_in_pyproject_need_the_projects_own_build(pyproject: bytes) -> None:
    assert static_requirements(pyproject, []) is None


def test_auto_installs_a_static_project_manifests_first_and_any_other_with_the_whole_repo(tmp_path: Path) -> None:
    static = write(tmp_path / "static", {"pyproject.toml": '[project]\nname = "x"\ndependencies = ["iniconfig"]\n'})
    found = detect(static)
    assert found.commands == [EDITABLE_LATER, "pip install 'setuptools>=64' wheel iniconfig"] and found.whole_repo is None
    with_setup_py = write(tmp_path / "setup_py", {"pyproject.toml": '[project]\nname = "x"\n', "setup.py": "import setuptools\n"})
    assert detect(with_setup_py).commands == ["pip install -e ."]
    assert detect(with_setup_py).whole_repo == "the project itself is installed (pyproject.toml, setup.py): its build reads and runs the repo's files"
