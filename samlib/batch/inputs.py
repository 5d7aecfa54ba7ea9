"""The images of a batch run: files, folders and glob patterns, expanded once, in order."""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Sequence
from pathlib import Path

from samlib.errors import ParameterError

#: File name endings read as images when a folder is given without ``pattern``.
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


def find_images(
    inputs: Sequence[str], *, pattern: str | None = None, recursive: bool = False
) -> list[Path]:
    """Every image the inputs name, sorted, each once.

    Parameters
    ----------
    inputs : paths
        Files, folders (their images: ``pattern`` or the :data:`IMAGE_SUFFIXES`) or glob
        patterns (``"plate1/*.tif"``).
    pattern : str, optional
        File name pattern within folders, e.g. ``"*_dapi.tif"``.
    recursive : bool
        Also look in sub-folders (and let ``**`` in patterns cross folders).
    """
    found: set[Path] = set()
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            walk = path.rglob if recursive else path.glob
            matches = [
                p
                for p in walk(pattern or "*")
                if p.is_file() and (pattern or p.suffix.lower() in IMAGE_SUFFIXES)
            ]
        elif path.is_file():
            matches = [path]
        else:
            matches = [Path(p) for p in glob.glob(text, recursive=recursive) if Path(p).is_file()]
        if not matches:
            raise ParameterError(f"no image found for {text!r}")
        found.update(p.resolve() for p in matches)
    return sorted(found)


def output_names(paths: Sequence[Path]) -> dict[Path, str]:
    """A folder name per image: its file stem, with a short hash of its path where two
    images share a stem."""
    stems: dict[str, int] = {}
    for p in paths:
        stems[p.stem] = stems.get(p.stem, 0) + 1
    return {p: p.stem if stems[p.stem] == 1 else f"{p.stem}-{_short_hash(p)}" for p in paths}


def _short_hash(path: Path) -> str:
    return hashlib.sha256(str(path).encode()).hexdigest()[:8]
