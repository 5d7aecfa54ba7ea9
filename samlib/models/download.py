"""Streamed, resumable, checksum-verified file downloads (standard library only).

The file is written to ``<dest>.part``; an interrupted download resumes from there with an
HTTP ``Range`` request, and the reply is used only if its ``Content-Range`` starts at the
byte asked for. Reading stops at the expected size (``Content-Length``, or the size the
caller knows); the SHA-256 is checked before the ``.part`` file is renamed into place
atomically, so ``dest`` only ever holds a complete, verified file.

One download of a destination runs at a time, across threads and processes (the app and
the CLI, batch workers, a cache shared by a cluster): the lock file ``<dest>.lock`` is
held for the whole download, with ``flock`` (POSIX) or ``msvcrt.locking`` (Windows). The
operating system releases such a lock when its owner dies, so a lock file left behind by
a dead process blocks nobody, and the next download resumes that process's ``.part``
file. Lock files stay in place (empty): deleting one while another process waits on it
would let two processes lock two different files of the same name.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from samlib.errors import ChecksumError, DownloadError, ParameterError

if os.name == "nt":
    import msvcrt
else:
    import fcntl

__all__ = ["download_file"]

Progress = Callable[[int, "int | None"], None]
_CHUNK = 1 << 20
_POLL = 0.05  # seconds between two attempts to take a lock that another process holds
_CONTENT_RANGE = re.compile(r"bytes ([0-9]+)-[0-9]+/([0-9]+|\*)")


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    size: int | None = None,
    progress: Progress | None = None,
    stall_timeout: float = 60.0,
    deadline: float | None = 4 * 3600.0,
) -> str:
    """Download ``url`` to ``dest``, resuming a previous partial download; return its SHA-256.

    Parameters
    ----------
    url : str
        ``http://`` or ``https://`` address.
    dest : path
        Final file. If it already exists, nothing is downloaded (no network access);
        it is only hashed and checked against ``sha256``. If another thread or process
        is downloading it, this call waits for that download and then uses its file.
    sha256 : str, optional
        Expected SHA-256 (hex). On mismatch the file is deleted and
        :class:`ChecksumError` raised.
    size : int, optional
        Expected size in bytes (e.g. published in the registry). Reading stops there
        even when the server sends no length, and a server offering another size is
        refused.
    progress : callable, optional
        ``progress(bytes_done, bytes_total_or_None)``, called after every chunk.
    stall_timeout : float
        Seconds without any data from the server (connecting, or while reading) before
        the download is abandoned.
    deadline : float or None
        Seconds the whole call may take, waiting for another process's download of the
        same file included; ``None`` for no limit. The default, 4 h, fetches the largest
        SAM checkpoint (2.6 GB) at 180 kB/s. It is checked as data arrives; a server
        that sends nothing is caught by ``stall_timeout``. A partial download is kept,
        and the next call resumes it.

    Returns
    -------
    str
        SHA-256 (hex) of the complete file.

    Raises
    ------
    DownloadError
        Network or HTTP failure, a stall or the deadline, or a server that sends another
        size or the wrong byte range.
    ChecksumError
        The file does not have the SHA-256 ``sha256``.
    """
    if not url.startswith(("http://", "https://")):
        raise DownloadError(f"only http(s) downloads are supported, got {url!r}")
    if not stall_timeout > 0:
        raise ParameterError(
            f"stall_timeout must be a positive number of seconds, got {stall_timeout!r}"
        )
    if deadline is not None and not deadline > 0:
        raise ParameterError(
            f"deadline must be a positive number of seconds or None, got {deadline!r}"
        )
    clock = _Clock(deadline)
    dest = Path(dest)
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(dest.with_name(dest.name + ".lock"), clock, dest):
            if not dest.is_file():  # not downloaded meanwhile by the lock's previous owner
                return _fetch(url, dest, sha256, size, progress, stall_timeout, clock)
    digest = _hash_existing(dest)[0].hexdigest()
    _check(digest, sha256, dest)
    return digest


class _Clock:
    """The deadline of one call, on the monotonic clock."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.end = None if seconds is None else time.monotonic() + seconds

    def passed(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end


# -- the lock across processes ------------------------------------------------------------
if os.name == "nt":

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # first byte; it may lie past the end
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


@contextmanager
def _exclusive(lock: Path, clock: _Clock, dest: Path) -> Iterator[None]:
    """Hold the lock file ``lock``, waiting for its owner until the deadline."""
    try:
        # Read-write: flock on NFS takes an exclusive lock only on a file open for writing.
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise DownloadError(f"cannot open the lock file {lock} ({exc})") from exc
    try:
        while not _try_lock(fd):
            if clock.passed():
                raise DownloadError(
                    f"another download of {dest.name} is still running after the deadline "
                    f"of {clock.seconds:g} s (lock file {lock}); try again later"
                )
            time.sleep(_POLL)
        try:
            yield
        finally:
            _unlock(fd)
    finally:
        os.close(fd)


# -- one download, with the lock held -----------------------------------------------------
def _fetch(
    url: str,
    dest: Path,
    sha256: str | None,
    size: int | None,
    progress: Progress | None,
    stall_timeout: float,
    clock: _Clock,
) -> str:
    part = dest.with_name(dest.name + ".part")
    h, done = _hash_existing(part)
    resp, first, range_total = _open_from(url, done, stall_timeout, dest)
    with resp:
        if first != done:  # the reply starts at byte 0: begin again
            h, done = hashlib.sha256(), 0
            part.unlink(missing_ok=True)
        total = _expected_size(resp, url, first, range_total, size)
        if progress is not None:
            progress(done, total)
        try:
            with open(part, "ab") as f:
                while total is None or done < total:
                    want = _CHUNK if total is None else min(_CHUNK, total - done)
                    block = _read(resp, want, url, stall_timeout)
                    if not block:
                        break
                    f.write(block)
                    h.update(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
                    if clock.passed():
                        raise DownloadError(
                            f"download of {url} passed its deadline of {clock.seconds:g} s "
                            f"after {done} of {total or '?'} bytes; run it again to resume"
                        )
        except OSError as exc:  # disk full, cache not writable
            raise DownloadError(f"cannot write {part} ({exc})") from exc
        if total is not None and done == total and _read(resp, 1, url, stall_timeout):
            part.unlink()
            raise DownloadError(
                f"{url} sent more than the expected {total} bytes; the partial file was "
                "removed, download it again"
            )
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


def _read(resp: http.client.HTTPResponse, n: int, url: str, stall_timeout: float) -> bytes:
    """Up to ``n`` bytes, as soon as some arrive (so that the deadline is checked often);
    ``b""`` at the end of the reply."""
    try:
        return resp.read1(n)
    except TimeoutError as exc:  # the socket's timeout is stall_timeout
        raise DownloadError(
            f"no data from {url} for {stall_timeout:g} s (stall timeout); run it again to resume"
        ) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError(
            f"download of {url} was interrupted ({exc}); run it again to resume"
        ) from exc


def _open_from(
    url: str, offset: int, timeout: float, dest: Path
) -> tuple[http.client.HTTPResponse, int, int | None]:
    """Request ``url`` from byte ``offset``; return the reply, its first byte, and the
    file size from its ``Content-Range`` (``None`` if not given).

    The first byte is ``offset`` or 0: a server that cannot serve ``offset`` (416) or
    answers from another byte is asked again for the whole file.
    """
    for asked in dict.fromkeys((offset, 0)):  # offset, then 0; only 0 if offset is 0
        try:
            resp = _open(url, asked, timeout, dest)
        except _RangeNotSatisfiable:
            continue  # the partial file is complete or larger than the remote file
        first, total = _content_range(resp, url)
        if first in (asked, 0):
            return resp, first, total
        resp.close()
    raise DownloadError(
        f"{url} answered a request for the whole file with bytes from {first} on; "
        "cannot download it"
    )


def _content_range(resp: http.client.HTTPResponse, url: str) -> tuple[int, int | None]:
    """First byte of the reply's body and the file size, from ``Content-Range`` (206)."""
    if resp.status != 206:
        return 0, None  # the whole file
    value = resp.headers.get("Content-Range", "")
    match = _CONTENT_RANGE.fullmatch(value.strip())
    if match is None:
        resp.close()
        raise DownloadError(f"{url} sent a partial reply with the Content-Range {value!r}")
    total = match[2]
    return int(match[1]), None if total == "*" else int(total)


def _expected_size(
    resp: http.client.HTTPResponse,
    url: str,
    first: int,
    range_total: int | None,
    size: int | None,
) -> int | None:
    """Size of the complete file in bytes, from every source that states it (they must
    agree), or ``None`` when none does."""
    sizes = {}
    length = resp.headers.get("Content-Length")
    if length is not None:
        if re.fullmatch("[0-9]+", length.strip()) is None:
            raise DownloadError(f"{url} sent the non-numeric Content-Length {length!r}")
        sizes["Content-Length says"] = first + int(length)
    if range_total is not None:
        sizes["Content-Range says"] = range_total
    if size is not None:
        sizes["expected"] = size
    if len(set(sizes.values())) > 1:
        stated = ", ".join(f"{source} {n} bytes" for source, n in sizes.items())
        raise DownloadError(f"{url} is not the expected file: {stated}")
    return next(iter(sizes.values()), None)


def _open(url: str, start: int, timeout: float, dest: Path) -> http.client.HTTPResponse:
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
        if isinstance(reason, TimeoutError):
            raise DownloadError(
                f"no answer from {url} for {timeout:g} s (stall timeout); are you offline?"
            ) from exc
        raise DownloadError(
            f"cannot reach {url} ({reason}); are you offline? You can also copy the "
            f"file by hand to {dest}"
        ) from exc


class _RangeNotSatisfiable(Exception):
    pass


def _hash_existing(path: Path) -> tuple[hashlib._Hash, int]:
    h = hashlib.sha256()
    done = 0
    if path.is_file():
        with open(path, "rb") as f:
            while block := f.read(_CHUNK):
                h.update(block)
                done += len(block)
    return h, done


def _check(digest: str, expected: str | None, path: Path) -> None:
    if expected is not None and digest != expected.lower():
        path.unlink(missing_ok=True)
        raise ChecksumError(
            f"{path.name} has SHA-256 {digest}, expected {expected}; the file was removed, "
            "download it again"
        )
