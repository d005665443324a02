"""Imported only by the batch's launcher process (orchestrator.batch.launcher), before it forks any run: what
every run imports, imported once, and the collector kept off it."""

from orchestrator.batch.launcher import preload

preload()
