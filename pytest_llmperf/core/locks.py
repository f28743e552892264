"""Machine-wide inter-process locks (pytest-xdist workers, concurrent pytest runs), kept out of the repo."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from filelock import FileLock


def machine_lock(name: str) -> FileLock:
    """A file lock shared by every process on this machine that asks for ``name``.

    The lock file lives in the temporary directory and is left in place after use: removing it would race
    with a process waiting on it.
    """
    from filelock import FileLock

    directory = Path(tempfile.gettempdir()) / "pytest-llmperf-locks"
    directory.mkdir(exist_ok=True)
    return FileLock(str(directory / (hashlib.sha256(name.encode()).hexdigest()[:24] + ".lock")))
