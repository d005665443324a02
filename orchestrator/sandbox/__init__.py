"""Sandboxes: the backend seam, what a run does in any sandbox, and the Docker backend."""
