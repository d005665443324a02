"""Errors that end a command with one clear line and a documented exit code."""


class AirlockError(Exception):
    """Base class: the message is shown to the user as one line, the process exits with `exit_code`."""

    exit_code = 1


class UsageError(AirlockError):
    """Bad usage or bad input (exit 2)."""

    exit_code = 2


class SandboxError(AirlockError):
    """The Docker daemon, the image or the container failed (exit 3)."""

    exit_code = 3


class ModelError(AirlockError):
    """The model API failed with an error that retrying will not fix (exit 4)."""

    exit_code = 4
