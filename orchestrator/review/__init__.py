"""Reviewing runs: the data of a run folder, its diff and flags, on the terminal and as an HTML report."""
