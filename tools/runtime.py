"""airlock's own programs in the sandbox: the tool runtime's copies (self-contained, read-only), so the tools
never depend on what the image holds; the image's own programs (found on PATH) where there is none."""

from __future__ import annotations

import os
import shutil

# Where sandbox_image/runtime.sh put them (the host side calls it RUNTIME_BIN too).
RUNTIME_BIN = "/opt/airlock-runtime/bin"


def program(name: str) -> str:
    """The runtime's `name`, else the first on PATH, else the bare name (for the error to say)."""
    own = os.path.join(RUNTIME_BIN, name)
    if os.access(own, os.X_OK):
        return own
    return shutil.which(name) or name
