"""Fixtures for every test. Docker's (and the check that no test leaves a sandbox behind) are in
tests/docker/conftest.py; tests/unit needs no Docker engine at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import SESSION_OWNER

from orchestrator.demo import CALCULATOR_REPO

os.environ["AIRLOCK_OWNER"] = SESSION_OWNER  # inherited by every airlock the tests start
# Host-side bookkeeping (when each environment was last used) stays out of the user's ~/.cache.
os.environ["AIRLOCK_CACHE"] = tempfile.mkdtemp(prefix="airlock-test-cache-")


@pytest.fixture
def calculator_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "calculator"
    shutil.copytree(CALCULATOR_REPO, repo, ignore=shutil.ignore_patterns("__pycache__"))
    return repo
