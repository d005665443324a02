"""Policies: the reviewed TOML model, command rules, the guard that enforces them during a run, and prices."""
