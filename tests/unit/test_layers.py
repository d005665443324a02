"""The layout is the architecture: strictly layered packages, no import circles, docker-py only where
Docker is the subject, and policy checks that work without docker-py installed at all."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from helpers import PROJECT

ORCHESTRATOR = PROJECT / "orchestrator"
# Lower numbers are lower layers: a module may import its own package and lower layers only.
LAYERS: dict[str, float] = {
    "errors": 0, "tokens": 0, "conversation": 1, "tool_specs": 1, "globs": 1, "sizes": 1, "terminal": 1,  # shared vocabulary
    "patch": 2, "providers": 2, "sandbox": 2,
    "policy": 3, "history": 3,
    "run": 4,
    "batch": 5, "review": 5,
    "demo": 6, "doctor": 6, "doctor_kubernetes": 6.5,
    "cli": 7, "__main__": 8,
}  # fmt: skip
# What some packages may use at all, beyond themselves.
ALLOWED = {
    "patch": {"errors"},
    "providers": {"errors", "conversation", "tool_specs"},
}
# Where docker-py may be imported: the Docker backend (its egress proxy and environment images), the daemon
# connection, the image builder, the image on remote engines, doctor.
DOCKER_MODULES = {
    "orchestrator.sandbox.docker_backend", "orchestrator.sandbox.docker_egress", "orchestrator.sandbox.docker_environments",
    "orchestrator.sandbox.docker_client", "orchestrator.sandbox.docker_tool_runtime", "orchestrator.sandbox.docker_build",
    "orchestrator.sandbox.image", "orchestrator.sandbox.engines", "orchestrator.doctor",
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module imported anywhere in the file (lazily in a function, or for type checking, too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in ORCHESTRATOR.rglob("*.py") if "calculator" not in path.parts}
    return {name: {imported for imported in imports_of(path) if imported in modules and imported != name} for name, path in modules.items()}


def package(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_every_package_has_a_layer() -> None:
    assert {package(module) for module in graph() if module != "orchestrator"} == set(LAYERS)


def test_no_import_goes_up_or_sideways() -> None:
    wrong = []
    for module, imported in graph().items():
        if module == "orchestrator":
            continue
        own = package(module)
        for target in imported - {"orchestrator"}:
            other = package(target)
            if other != own and (LAYERS[other] >= LAYERS[own] or other not in ALLOWED.get(own, {other})):
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_no_import_circles() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_docker_py_is_imported_only_where_docker_is_the_subject() -> None:
    using = {module_name(path) for path in ORCHESTRATOR.rglob("*.py") if any(name.split(".")[0] == "docker" for name in imports_of(path))}
    assert using <= DOCKER_MODULES, sorted(using - DOCKER_MODULES)


def test_policy_check_and_show_work_without_docker_py(tmp_path: Path) -> None:
    """The full CLI with docker-py made unimportable, as if it were not installed."""
    script = "import sys\nsys.modules['docker'] = None\nfrom orchestrator.cli import main\nsys.argv = ['airlock', *sys.argv[1:]]\nmain()\n"
    strict = str(PROJECT / "policies" / "strict.toml")
    for args in (["policy", "check", strict], ["policy", "show", strict]):
        done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=tmp_path, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "docker" not in done.stderr.lower()
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits]\ncpus = 'many'\n")
    done = subprocess.run([sys.executable, "-c", script, "policy", "check", str(bad)], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 2 and "cpus" in done.stderr and "Traceback" not in done.stderr
