"""The tools are declared twice, on either side of the trust boundary, and neither side may import the
other: the host's pydantic models (orchestrator/tool_specs.py), which the model sees and the host validates
against, and the sandbox's parameter tuples (tools/*.py), which the tool server checks again. Keep them equal."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pytest
from pydantic.fields import FieldInfo

from orchestrator.tool_specs import TOOLS as HOST_TOOLS

TOOLS_DIR = Path(__file__).resolve().parents[2] / "tools"
SERVER_ONLY = {"ping"}  # the server's health check, never offered to the model


@pytest.fixture(scope="module")
def sandbox_tools() -> Iterator[dict[str, Any]]:
    """tools/server.py's table, imported the way the sandbox runs it: a folder of flat modules."""
    sys.path.insert(0, str(TOOLS_DIR))
    names = ["toolkit", "protocol", "shell", "search", "file_tools", "server"]
    try:
        yield importlib.import_module("server").TOOLS
    finally:
        sys.path.remove(str(TOOLS_DIR))
        for name in names:
            sys.modules.pop(name, None)


def host_param(field: FieldInfo) -> tuple[type, bool, Any, float | None, float | None]:
    """(JSON type, required, default, minimum, maximum) of one pydantic field."""
    annotation = field.annotation
    if get_origin(annotation) in (Union, types.UnionType):  # `int | None`: optional
        annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
    minimum = maximum = None
    for bound in field.metadata:
        minimum = getattr(bound, "ge", minimum)
        maximum = getattr(bound, "le", maximum)
    required = field.is_required()
    return annotation, required, None if required else field.default, minimum, maximum


def sandbox_param(param: Any, required_marker: Any) -> tuple[type, bool, Any, float | None, float | None]:
    required = param.default is required_marker
    return param.kind, required, None if required else param.default, param.minimum, param.maximum


def test_the_same_tools_are_declared_on_both_sides(sandbox_tools: dict[str, Any]) -> None:
    assert set(HOST_TOOLS) == set(sandbox_tools) - SERVER_ONLY


@pytest.mark.parametrize("name", sorted(HOST_TOOLS))
def test_each_tool_has_the_same_arguments_types_defaults_and_bounds(sandbox_tools: dict[str, Any], name: str) -> None:
    required_marker = sys.modules["toolkit"]._REQUIRED
    host = {arg: host_param(field) for arg, field in HOST_TOOLS[name].model_fields.items()}
    sandbox = {param.name: sandbox_param(param, required_marker) for param in sandbox_tools[name].params}
    assert list(host) == list(sandbox), "the same arguments, in the same order"
    for arg in host:
        assert host[arg] == sandbox[arg], f"{name}.{arg}: host (type, required, default, min, max) {host[arg]} != sandbox {sandbox[arg]}"
