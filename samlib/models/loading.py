"""The checkpoint cache, downloads, and loading a model by name or path.

Models are named in :mod:`samlib.models.registry` (re-exported here: ``REGISTRY``,
``ModelEntry``, ``register_model``). :func:`load_model` takes a registry name or a
checkpoint path and returns a ``segment_anything`` ``Sam`` in eval mode whose
``samlib_info`` attribute says which weights it holds. Checkpoint files are read safely
by :mod:`samlib.models.checkpoints`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from platformdirs import user_cache_dir
from segment_anything.modeling import Sam

from samlib.errors import ChecksumError, ModelNotDownloadedError, UnknownModelError
from samlib.models.accel import accelerate
from samlib.models.arch import SamConfig
from samlib.models.checkpoints import (
    file_sha256,
    model_from_state,
    read_checkpoint,
    save_checkpoint,
)
from samlib.models.download import download_file
from samlib.models.registry import (
    DOWNLOAD_PREFERENCE,
    REGISTRY,
    ModelEntry,
    register_model,
    registered,
)

__all__ = [
    "REGISTRY",
    "ModelEntry",
    "ModelInfo",
    "ModelStatus",
    "cache_dir",
    "checkpoint_path",
    "default_model_name",
    "download_model",
    "file_sha256",
    "load_model",
    "model_status",
    "pick_device",
    "read_checkpoint",
    "register_model",
    "save_checkpoint",
]

CACHE_ENV = "SAMLIB_CACHE_DIR"
MODEL_ENV = "SAMLIB_MODEL"
_PACKAGE_DIR = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is: registry name (or file stem), checkpoint SHA-256, config."""

    name: str
    sha256: str
    config: SamConfig
    path: str | None = None


@dataclass(frozen=True)
class ModelStatus:
    """Whether a registered model's checkpoint is available locally."""

    name: str
    cached: bool
    path: Path
    size: int | None
    expected_size: int | None
    partial_bytes: int


# -- cache and device -------------------------------------------------------------------
def cache_dir() -> Path:
    """Folder holding downloaded checkpoints (``$SAMLIB_CACHE_DIR`` or the user cache)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()

    return Path(user_cache_dir("samlib", appauthor=False))


def checkpoint_path(name: str) -> Path:
    """Where the checkpoint of registered model ``name`` lives (whether present or not)."""
    entry = registered(name)
    if entry.package_file:
        return _PACKAGE_DIR / entry.filename
    return cache_dir() / "checkpoints" / entry.filename


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def model_status(name: str) -> ModelStatus:
    """Report whether model ``name`` is downloaded, where, and how big."""
    entry = registered(name)
    path = checkpoint_path(name)
    part = path.with_name(path.name + ".part")
    return ModelStatus(
        name=name,
        cached=path.is_file(),
        path=path,
        size=path.stat().st_size if path.is_file() else None,
        expected_size=entry.size,
        partial_bytes=part.stat().st_size if part.is_file() else 0,
    )


def pick_device() -> torch.device:
    """The best available device: CUDA, then Apple MPS, then CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_model_name() -> str:
    """The model to use when none is given.

    ``$SAMLIB_MODEL`` (a registry name or a checkpoint path) wins; otherwise the first
    downloaded model in the order vit_b_lm, vit_b, vit_l_lm, vit_l, vit_h; otherwise a
    model shipped inside the package; otherwise ``"vit_b"``.
    """
    env = os.environ.get(MODEL_ENV, "").strip()
    if env:
        return env
    for name in DOWNLOAD_PREFERENCE:
        if name in REGISTRY and checkpoint_path(name).is_file():
            return name
    for name, entry in REGISTRY.items():
        if entry.package_file and checkpoint_path(name).is_file():
            return name
    return "vit_b"


# -- hashing ----------------------------------------------------------------------------
def record_sha256(path: Path, sha256: str) -> None:
    """Write the sidecar ``<file>.sha256.json`` that later loads verify against."""
    st = path.stat()
    _sidecar(path).write_text(
        json.dumps({"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    )


def verify_cached(name: str) -> str:
    """Check the cached checkpoint of ``name`` against its known hash; return the hash.

    The file is re-hashed only when its size or modification time differ from the
    sidecar written at download; a mismatch raises :class:`ChecksumError`.
    """
    entry = registered(name)
    path = checkpoint_path(name)
    side = _sidecar(path)
    st = path.stat()
    recorded: dict[str, Any] = {}
    if side.is_file():
        try:
            recorded = json.loads(side.read_text())
        except (OSError, ValueError):
            recorded = {}
    expected = entry.sha256 or recorded.get("sha256")
    if (
        recorded.get("sha256")
        and recorded.get("size") == st.st_size
        and recorded.get("mtime_ns") == st.st_mtime_ns
        and (entry.sha256 is None or recorded["sha256"] == entry.sha256)
    ):
        return str(recorded["sha256"])
    actual = file_sha256(path)
    if expected is not None and actual != expected:
        raise ChecksumError(
            f"checkpoint {path} of model {name!r} has SHA-256 {actual}, expected {expected}; "
            "the file is damaged or not the right one: delete it and download it again"
        )
    if not entry.package_file:
        record_sha256(path, actual)
    return actual


def download_model(name: str, progress: Callable[[int, int | None], None] | None = None) -> Path:
    """Download registered model ``name`` into the cache (no network if already there)."""

    entry = registered(name)
    path = checkpoint_path(name)
    if entry.package_file:
        return path
    if path.is_file():
        verify_cached(name)
        return path
    if entry.url is None:
        raise ModelNotDownloadedError(f"model {name!r} has no download address")
    sha = download_file(entry.url, path, sha256=entry.sha256, size=entry.size, progress=progress)
    record_sha256(path, sha)
    return path


# -- reading and loading ----------------------------------------------------------------
def suggested_params(model_or_name: Any) -> dict[str, float]:
    """Segment-everything parameters suggested for a model (empty: SAM's defaults).

    Accepts a registry name or a model returned by :func:`load_model`.
    """
    name = model_or_name
    if not isinstance(name, str):
        info = getattr(model_or_name, "samlib_info", None)
        name = info.name if info is not None else ""
    entry = REGISTRY.get(name)
    return dict(entry.suggested_params or {}) if entry is not None else {}


def load_model(
    name_or_path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    *,
    allow_pickle: bool = False,
    fast_encoder: bool = False,
) -> Sam:
    """Load a SAM model from a registry name or a checkpoint path.

    Parameters
    ----------
    name_or_path : str or path
        A key of :data:`REGISTRY` (its checkpoint must be in the cache; see
        :func:`download_model`) or the path of a checkpoint file. A file whose SHA-256 is a
        registered model's is loaded as that model (its name and mask threshold).
    device : str or torch.device, optional
        Where to put the model; default :func:`pick_device`. Weights are read on the CPU
        first.
    allow_pickle : bool
        Allow checkpoints that need full unpickling. Only for files you trust.
    fast_encoder : bool
        Speed up the image encoder (:func:`samlib.models.accel.accelerate`), as the app and
        the command line run models. Embeddings then differ from stock by float rounding,
        so a result is reproduced bit for bit only with the same choice.

    Returns
    -------
    Sam
        In eval mode, with attribute ``samlib_info`` (:class:`ModelInfo`).
    """
    key = os.fspath(name_or_path)
    if key in REGISTRY:
        path = checkpoint_path(key)
        if not path.is_file():
            raise ModelNotDownloadedError(
                f"model {key!r} is not downloaded; run `samlib download {key}` "
                f"or copy {REGISTRY[key].filename} (from {REGISTRY[key].url}) into "
                f"{path.parent}"
            )
        sha = verify_cached(key)
        name = key
        mask_threshold = REGISTRY[key].mask_threshold
    else:
        path = Path(key).expanduser()
        if not path.is_file():
            raise UnknownModelError(
                f"{key!r} is neither a known model ({', '.join(sorted(REGISTRY))}) nor an "
                "existing checkpoint file"
            )
        sha = file_sha256(path)
        # a registered model's file given by its path is that model: same name, threshold
        # and suggested parameters as when it is loaded by name
        known = next((k for k, e in REGISTRY.items() if e.sha256 and e.sha256 == sha), None)
        name = known or path.stem
        # otherwise the file's own threshold, if it records one (read below)
        mask_threshold = REGISTRY[known].mask_threshold if known else None
    state, config, meta = read_checkpoint(path, allow_pickle=allow_pickle)
    if mask_threshold is None and isinstance(meta.get("mask_threshold"), (int, float)):
        mask_threshold = float(meta["mask_threshold"])
    model = model_from_state(state, config, str(path))
    model = model.to(torch.device(device) if device is not None else pick_device())
    model.samlib_info = ModelInfo(name=name, sha256=sha, config=config, path=str(path))
    if mask_threshold is not None and mask_threshold != model.mask_threshold:
        model.mask_threshold = mask_threshold
    if fast_encoder:
        accelerate(model)
    return model
