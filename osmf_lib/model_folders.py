"""Model folders under `models.dir` that builders write once and every later run reuses."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def publish(folder: Path, save: Callable[[Path], None]) -> Path:
    """Let `save` fill a staging folder beside `folder`, then rename it into place: an interrupted
    build leaves no folder behind, and a reader never sees half of one."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        save(staging)
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the folder from other users of models.dir
        if not folder.exists():  # else a concurrent run built the same bytes meanwhile
            os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
