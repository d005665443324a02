"""Imported once by the server the tests' CLI processes are forked from (helpers.airlock): the CLI chooses its
layout as it is imported, so it is imported with the COLUMNS every test's environment gives it."""

import os

os.environ["COLUMNS"] = "200"

from orchestrator.batch.launcher import preload  # noqa: E402

preload()
