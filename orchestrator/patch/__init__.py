"""Patches: the strict checker of what leaves a sandbox, and applying one under a neutral git configuration."""
