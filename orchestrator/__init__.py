"""airlock: run a coding agent against a repo inside a hardened, network-less Docker sandbox."""

__version__ = "0.1.0"
