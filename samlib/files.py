"""Files that a crash or a power cut never leaves half-written under their own name.

:func:`write_atomic` is the one way samlib writes a file that must be whole (exports, batch
manifests and tables, checkpoints, the embedding cache); :func:`prune_temp_files` deletes
the temporary files that writers which died left behind.

Imports nothing from samlib, so every subpackage may import it.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["prune_temp_files", "write_atomic"]


def write_atomic(
    path: str | os.PathLike[str], content: bytes | Callable[[IO[bytes]], object]
) -> Path:
    """Write ``content`` to ``path`` through a temporary file in the same folder; return the path.

    Parameters
    ----------
    path : path
        The file to write; its folder must exist.
    content : bytes or callable
        The bytes, or a function that writes them to the binary file object it is given (for
        content not worth holding in memory, such as a checkpoint).

    The temporary file (``.<name>.<random>.tmp``) is flushed to the disk (``fsync``) before it
    is renamed over ``path``, and the rename is synced too where the system allows, so after a
    power cut ``path`` holds the old content or the new, never a truncated file. On any error
    the temporary file is removed and the error raised (``OSError`` for a full disk or a folder
    that cannot be written).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)
    return path


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable; nothing where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not sync folders; the file itself is on the disk already
    finally:
        os.close(fd)


def prune_temp_files(
    folder: str | os.PathLike[str],
    older_than_s: float,
    suffixes: tuple[str, ...] = (".tmp", ".part"),
) -> list[Path]:
    """Delete the files of ``folder`` named ``*<suffix>`` and last modified more than
    ``older_than_s`` seconds ago; return their paths.

    A writer that crashed or lost power leaves its temporary file behind; one that is still
    writing has modified its file recently, so recent files are left alone. A folder or a file
    that cannot be read or deleted is skipped: pruning is housekeeping and never fails.
    """
    cutoff = time.time() - older_than_s
    removed = []
    try:
        with os.scandir(folder) as listing:
            entries = list(listing)
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.endswith(suffixes):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed
