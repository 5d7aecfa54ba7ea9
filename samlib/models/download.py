"""Streamed, resumable, checksum-verified file downloads (standard library only).

The file is written to ``<dest>.part``; an interrupted download resumes from there with an
HTTP ``Range`` request; the SHA-256 is checked before the ``.part`` file is renamed into
place atomically, so ``dest`` only ever holds a complete, verified file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from samlib.errors import ChecksumError, DownloadError

__all__ = ["download_file"]

Progress = Callable[[int, "int | None"], None]
_CHUNK = 1 << 20


def _hash_existing(path: Path) -> tuple[hashlib._Hash, int]:
    h = hashlib.sha256()
    done = 0
    if path.is_file():
        with open(path, "rb") as f:
            while block := f.read(_CHUNK):
                h.update(block)
                done += len(block)
    return h, done


def _open(url: str, start: int, timeout: float, dest: Path):
    headers = {"User-Agent": "samlib"}
    if start:
        headers["Range"] = f"bytes={start}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (http(s) only)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:
            raise _RangeNotSatisfiable from exc
        raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"cannot reach {url} ({reason}); are you offline? You can also copy the "
            f"file by hand to {dest}"
        ) from exc


class _RangeNotSatisfiable(Exception):
    pass


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    size: int | None = None,
    progress: Progress | None = None,
    timeout: float = 30.0,
) -> str:
    """Download ``url`` to ``dest``, resuming a previous partial download; return its SHA-256.

    Parameters
    ----------
    url : str
        ``http://`` or ``https://`` address.
    dest : path
        Final file. If it already exists, nothing is downloaded (no network access);
        it is only hashed and checked against ``sha256``.
    sha256 : str, optional
        Expected SHA-256 (hex). On mismatch the file is deleted and
        :class:`ChecksumError` raised.
    size : int, optional
        Expected size in bytes, used for progress when the server sends no length.
    progress : callable, optional
        ``progress(bytes_done, bytes_total_or_None)``, called after every chunk.
    timeout : float
        Seconds to wait for the server on connect and on each read.

    Returns
    -------
    str
        SHA-256 (hex) of the complete file.
    """
    if not url.startswith(("http://", "https://")):
        raise DownloadError(f"only http(s) downloads are supported, got {url!r}")
    dest = Path(dest)
    # Two threads (e.g. two users of one app server) asking for the same file: the second
    # waits and then finds the finished file instead of appending to the same .part.
    with _lock_for(dest):
        return _download_locked(url, dest, sha256, size, progress, timeout)


_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock_for(dest: Path) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(str(dest.resolve()), threading.Lock())


def _download_locked(
    url: str,
    dest: Path,
    sha256: str | None,
    size: int | None,
    progress: Progress | None,
    timeout: float,
) -> str:
    if dest.is_file():
        digest = _hash_existing(dest)[0].hexdigest()
        _check(digest, sha256, dest)
        return digest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    h, done = _hash_existing(part)
    try:
        resp = _open(url, done, timeout, dest)
    except _RangeNotSatisfiable:
        # The partial file is already complete (or larger than the remote file): restart.
        part.unlink(missing_ok=True)
        h, done = hashlib.sha256(), 0
        resp = _open(url, 0, timeout, dest)
    with resp:
        status = getattr(resp, "status", 200)
        if done and status != 206:
            # The server ignored the Range header and sends the whole file again.
            h, done = hashlib.sha256(), 0
            part.unlink(missing_ok=True)
        length = resp.headers.get("Content-Length")
        total = done + int(length) if length is not None else size
        if progress is not None:
            progress(done, total)
        try:
            with open(part, "ab") as f:
                while block := resp.read(_CHUNK):
                    f.write(block)
                    h.update(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadError(
                f"download of {url} was interrupted after {done} bytes ({exc}); "
                "run it again to resume"
            ) from exc
    if total is not None and done < total:
        raise DownloadError(
            f"download of {url} stopped at {done} of {total} bytes; run it again to resume"
        )
    digest = h.hexdigest()
    try:
        _check(digest, sha256, part)
    except ChecksumError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return digest


def _check(digest: str, expected: str | None, path: Path) -> None:
    if expected is not None and digest != expected.lower():
        path.unlink(missing_ok=True)
        raise ChecksumError(
            f"{path.name} has SHA-256 {digest}, expected {expected}; the file was removed, "
            "download it again"
        )
