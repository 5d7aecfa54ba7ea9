"""What a shared server lets its visitors do, as set by the person who starts it.

Every browser visitor's input reaches the server, so whatever reads or keeps files on the
server for a visitor is off unless the server's owner turns it on with an environment
variable (read once per page run by :meth:`ServerPolicy.from_env`):

==================================== ===================================================
``SAMLIB_ALLOW_SERVER_PATHS=1``      visitors may type the path of a checkpoint file on
                                     the server (any file the server can read)
``SAMLIB_ALLOW_CHECKPOINT_UPLOADS=1`` visitors may upload checkpoint files
``SAMLIB_UPLOAD_MAX_FILES``          uploaded checkpoints one session may keep (default 2)
``SAMLIB_UPLOAD_MAX_MB``             megabytes they may take together (default 2,000)
``SAMLIB_UPLOAD_IDLE_HOURS``         a session's uploads unused this long are deleted
                                     (default 12)
==================================== ===================================================

Uploaded checkpoints live in a folder of their own per session (:class:`SessionUploads`),
named by a random token, so no session can list or load another's. Streamlit tells an app
nothing when a session ends, so a session's folder is deleted when nobody has used it for
``SAMLIB_UPLOAD_IDLE_HOURS`` (:func:`prune_idle_uploads`, run when the app starts and on
every upload), or at once when its visitor deletes the uploads.

Visitors see models by name (:func:`model_label`), never by the server path they are read
from, and errors about a checkpoint name its file, not its folder (:func:`without_folder`).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from samlib.errors import ParameterError, QuotaError
from samlib.files import write_atomic
from samlib.models.loading import REGISTRY

ALLOW_PATHS_ENV = "SAMLIB_ALLOW_SERVER_PATHS"
ALLOW_UPLOADS_ENV = "SAMLIB_ALLOW_CHECKPOINT_UPLOADS"
MAX_FILES_ENV = "SAMLIB_UPLOAD_MAX_FILES"
MAX_MB_ENV = "SAMLIB_UPLOAD_MAX_MB"
IDLE_HOURS_ENV = "SAMLIB_UPLOAD_IDLE_HOURS"

#: File name endings of checkpoints a visitor may upload.
CHECKPOINT_SUFFIXES = (".pt", ".pth")

_ON = {"1", "true", "yes", "on"}
_OFF = {"", "0", "false", "no", "off"}
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,64}")


@dataclass(frozen=True)
class ServerPolicy:
    """The switches and limits the server's owner set; the defaults are a public server's.

    Attributes
    ----------
    server_paths : bool
        Visitors may load a checkpoint by its path on the server.
    checkpoint_uploads : bool
        Visitors may upload checkpoint files.
    max_uploads : int
        Uploaded checkpoints one session may keep at once (>= 1).
    max_upload_mb : float
        Megabytes (10**6 bytes) one session's uploaded checkpoints may take together.
    idle_hours : float
        A session's uploads that nobody used for this long are deleted.
    """

    server_paths: bool = False
    checkpoint_uploads: bool = False
    max_uploads: int = 2
    max_upload_mb: float = 2000.0
    idle_hours: float = 12.0

    def __post_init__(self) -> None:
        if isinstance(self.max_uploads, bool) or not isinstance(self.max_uploads, int):
            raise ParameterError(f"max_uploads must be an integer, got {self.max_uploads!r}")
        if self.max_uploads < 1:
            raise ParameterError(f"max_uploads must be at least 1, got {self.max_uploads}")
        for name in ("max_upload_mb", "idle_hours"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ParameterError(f"{name} must be a positive number, got {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerPolicy:
        """Read the policy from the environment (``os.environ`` unless ``environ`` is given).

        Raises :class:`~samlib.errors.ParameterError`, naming the variable, for a value that
        is not a switch (1/0, true/false, yes/no, on/off) or not a positive number.
        """
        env = os.environ if environ is None else environ
        return cls(
            server_paths=_switch(env, ALLOW_PATHS_ENV),
            checkpoint_uploads=_switch(env, ALLOW_UPLOADS_ENV),
            max_uploads=int(_number(env, MAX_FILES_ENV, cls.max_uploads, whole=True)),
            max_upload_mb=_number(env, MAX_MB_ENV, cls.max_upload_mb),
            idle_hours=_number(env, IDLE_HOURS_ENV, cls.idle_hours),
        )

    @property
    def max_upload_bytes(self) -> int:
        """:attr:`max_upload_mb` in bytes."""
        return int(self.max_upload_mb * 1e6)

    def settings(self) -> list[dict[str, str]]:
        """One row per setting, for a table: ``setting``, ``value``, ``variable``."""

        def on(flag: bool) -> str:
            return "on" if flag else "off"

        return [
            {
                "setting": "Checkpoint paths on the server",
                "value": on(self.server_paths),
                "variable": ALLOW_PATHS_ENV,
            },
            {
                "setting": "Checkpoint uploads",
                "value": on(self.checkpoint_uploads),
                "variable": ALLOW_UPLOADS_ENV,
            },
            {
                "setting": "Uploaded checkpoints per session",
                "value": f"{self.max_uploads}",
                "variable": MAX_FILES_ENV,
            },
            {
                "setting": "Megabytes of uploads per session",
                "value": f"{self.max_upload_mb:,g}",
                "variable": MAX_MB_ENV,
            },
            {
                "setting": "Unused uploads deleted after (hours)",
                "value": f"{self.idle_hours:g}",
                "variable": IDLE_HOURS_ENV,
            },
        ]


def _switch(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "")
    word = raw.strip().lower()
    if word in _ON:
        return True
    if word in _OFF:
        return False
    raise ParameterError(f"{name}={raw!r}: use 1 to turn it on or 0 to turn it off")


def _number(env: Mapping[str, str], name: str, default: float, whole: bool = False) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        kind = "a whole number of at least 1" if whole else "a positive number"
        raise ParameterError(f"{name}={raw!r}: must be {kind}")
    return value


class SessionUploads:
    """The checkpoints one session uploaded, in a folder of its own: ``root / token``.

    Parameters
    ----------
    root : path
        The folder holding every session's upload folder.
    token : str
        The session's random name (16 to 64 letters, digits, ``-`` or ``_``); whoever does
        not know it cannot name the folder.
    policy : ServerPolicy
        Its quota: how many files and bytes the folder may hold.
    """

    def __init__(self, root: str | os.PathLike[str], token: str, policy: ServerPolicy) -> None:
        if not _TOKEN.fullmatch(token):
            raise ParameterError(f"session token must be 16 to 64 letters or digits, got {token!r}")
        self.root = Path(root)
        self.folder = self.root / token
        self.policy = policy

    def files(self) -> list[Path]:
        """The session's uploaded checkpoints, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [
            p
            for p in self.folder.iterdir()
            if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES and not p.name.startswith(".")
        ]
        return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))

    def used_bytes(self) -> int:
        """Bytes the session's uploaded checkpoints take together."""
        return sum(p.stat().st_size for p in self.files())

    def owns(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` is a file in this session's folder."""
        return _inside(Path(path), self.folder)

    def is_foreign(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` lies among the uploads of any other session (never to be loaded)."""
        return _inside(Path(path), self.root) and not self.owns(path)

    def add(self, name: str, data: bytes) -> Path:
        """Keep the uploaded checkpoint ``data`` (its file name was ``name``); return its path.

        The file is named ``<stem>-<16 hex digits of its SHA-256><suffix>``; the same bytes
        uploaded again (under any name) return the kept file and count once. Raises
        :class:`~samlib.errors.ParameterError` for a name that does not end in ``.pt`` or
        ``.pth``, and :class:`~samlib.errors.QuotaError` when the session would keep more
        files or bytes than the policy allows (nothing is written then).
        """
        suffix = Path(name).suffix.lower()
        if suffix not in CHECKPOINT_SUFFIXES:
            raise ParameterError(
                f"{name!r} is not a checkpoint file: its name must end in .pt or .pth"
            )
        digest = hashlib.sha256(data).hexdigest()[:16]
        kept = self.files()
        for path in kept:
            if path.stem.endswith("-" + digest):
                self.touch()
                return path
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).stem)[:64].lstrip(".") or "checkpoint"
        path = self.folder / f"{stem}-{digest}{suffix}"
        cap = self.policy
        if len(kept) >= cap.max_uploads:
            raise QuotaError(
                f"{name} was not kept: this session already has {len(kept)} uploaded "
                f"checkpoint(s), the most this server allows; delete them to upload another"
            )
        total = self.used_bytes() + len(data)
        if total > cap.max_upload_bytes:
            raise QuotaError(
                f"{name} ({len(data) / 1e6:,.0f} MB) was not kept: this session's uploads "
                f"would take {total / 1e6:,.0f} MB, more than the {cap.max_upload_mb:,g} MB "
                "this server allows"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        return write_atomic(path, data)

    def clear(self) -> None:
        """Delete the session's folder and every checkpoint in it."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def touch(self) -> None:
        """Mark the folder as used now, so that :func:`prune_idle_uploads` keeps it."""
        if self.folder.is_dir():
            os.utime(self.folder)


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.expanduser().resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError):
        return False


def prune_idle_uploads(
    root: str | os.PathLike[str],
    idle_hours: float,
    *,
    keep: str | os.PathLike[str] | None = None,
    now: float | None = None,
) -> list[Path]:
    """Delete the entries of ``root`` that nobody used for ``idle_hours``; return them.

    An entry's last use is its modification time (a folder's changes when a file is added or
    removed, and :meth:`SessionUploads.touch` sets it). ``keep`` (the calling session's
    folder) is never deleted; ``now`` is a ``time.time()`` value (default: now).
    """
    root = Path(root)
    if not root.is_dir():
        return []
    limit = (time.time() if now is None else now) - idle_hours * 3600.0
    spared = Path(keep).resolve() if keep is not None else None
    removed = []
    for entry in root.iterdir():
        try:
            if entry.resolve() == spared or entry.lstat().st_mtime >= limit:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:  # another process pruned it first
            continue
        removed.append(entry)
    return removed


def model_label(name_or_path: str) -> str:
    """What visitors see for a model: a registry name as it is, a checkpoint by its file name."""
    if name_or_path in REGISTRY:
        return name_or_path
    return Path(name_or_path).name or name_or_path


def without_folder(text: str, name_or_path: str) -> str:
    """``text`` with the folder of checkpoint ``name_or_path`` left out (just its file name).

    For messages shown to visitors: errors about a checkpoint name its path on the server.
    """
    if name_or_path in REGISTRY or not name_or_path:
        return text
    path = Path(name_or_path).expanduser()
    forms = {name_or_path, str(path), str(path.resolve()), str(path.absolute())}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, path.name)
    return text
