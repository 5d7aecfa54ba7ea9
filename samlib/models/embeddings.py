"""Image embeddings: computed once per (model, image, normalisation), cached in memory and on disk.

An :class:`Embedding` holds everything prompting needs about one image, so prompting takes
it as an argument instead of reading a shared predictor's state: two users can prompt
different images with the same model at the same time.

:func:`compute_embedding` does exactly what ``SamPredictor.set_image`` does (the same
``ResizeLongestSide`` resize, pixel normalisation and zero padding), so its features are
bit-identical to the predictor's and every mask downstream matches stock SAM.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from samlib.errors import CacheWarning, ParameterError
from samlib.files import prune_temp_files, write_atomic
from samlib.image.display import check_rgb8
from samlib.image.microscopy import image_hash
from samlib.models.accel import accelerated
from samlib.models.loading import cache_dir

__all__ = [
    "Embedding",
    "EmbeddingCache",
    "compute_embedding",
    "default_cache_dir",
    "embedding_key",
    "check_embedding",
    "model_key",
    "STALE_TEMP_S",
]

# Bump when the on-disk layout or the way features are computed changes.
_FORMAT = 1

#: Age in seconds after which a temporary file in the cache folder is a dead writer's (an
#: embedding is written in well under a second) and is deleted.
STALE_TEMP_S = 3600.0


@dataclass(frozen=True)
class Embedding:
    """The image encoder's output for one image, plus the sizes needed to map masks back.

    Attributes
    ----------
    features : torch.Tensor
        (1, C, h, w) float32 image-encoder output on the model's device
        (C=256, h=w=64 for the official SAM models).
    original_size : (int, int)
        (H, W) of the RGB image that was encoded.
    input_size : (int, int)
        (h, w) of the image after ``ResizeLongestSide`` to the model's ``img_size``,
        before padding.
    key : str
        Cache key (model, image content, normalisation); empty when not keyed.
    image_sha256 : str
        :func:`samlib.image.microscopy.image_hash` of the RGB image that was encoded;
        empty when unknown (embeddings cached before it was recorded).
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    key: str = ""
    image_sha256: str = ""


@torch.no_grad()
def compute_embedding(model: Sam, rgb8: np.ndarray, *, key: str = "") -> Embedding:
    """Encode one image exactly as ``SamPredictor.set_image`` does.

    Parameters
    ----------
    model : Sam
        A ``segment_anything`` SAM model (eval mode) on any device.
    rgb8 : numpy.ndarray
        (H, W, 3) uint8 RGB image.
    key : str, optional
        Stored in the returned embedding (see :func:`embedding_key`).

    Returns
    -------
    Embedding
        Features on the model's device; bit-identical to ``SamPredictor.features``.
    """
    rgb8 = check_rgb8(rgb8)
    sha256 = image_hash(rgb8)
    if model.image_format != "RGB":
        rgb8 = rgb8[..., ::-1]
    transform = ResizeLongestSide(model.image_encoder.img_size)
    resized = transform.apply_image(rgb8)
    x = torch.as_tensor(resized, device=model.device).permute(2, 0, 1).contiguous()[None]
    input_size = (int(x.shape[-2]), int(x.shape[-1]))
    features = model.image_encoder(model.preprocess(x))
    return Embedding(
        features=features,
        original_size=(int(rgb8.shape[0]), int(rgb8.shape[1])),
        input_size=input_size,
        key=key,
        image_sha256=sha256,
    )


def check_embedding(embedding: Embedding, rgb8: np.ndarray) -> None:
    """Raise :class:`~samlib.errors.ParameterError` unless ``embedding`` is of ``rgb8``.

    The sizes must agree, and the image hashes too where the embedding recorded one.
    """
    size = (int(rgb8.shape[0]), int(rgb8.shape[1]))
    if tuple(embedding.original_size) != size:
        raise ParameterError(f"the embedding is of a {embedding.original_size} image, not {size}")
    if embedding.image_sha256 and embedding.image_sha256 != image_hash(rgb8):
        raise ParameterError("the embedding is of another image of the same size")


def default_cache_dir() -> Path:
    """Folder for the disk cache of embeddings: ``<samlib cache>/embeddings``."""

    return cache_dir() / "embeddings"


# Models without a recorded checkpoint hash (built in memory) are keyed by a hash of
# their weights, computed once per model object.
_MODEL_KEYS: weakref.WeakKeyDictionary[torch.nn.Module, tuple[int, str]] = (
    weakref.WeakKeyDictionary()
)
_MODEL_KEYS_LOCK = threading.Lock()


def model_key(model: Sam) -> str:
    """A string identifying a model's weights: its checkpoint SHA-256 when known."""
    info = getattr(model, "samlib_info", None)
    if info is not None and getattr(info, "sha256", None):
        return f"sha256:{info.sha256}"
    # In-place changes (an optimizer step, load_state_dict) bump tensor versions.
    version = sum(t._version for t in model.state_dict().values())
    with _MODEL_KEYS_LOCK:
        cached = _MODEL_KEYS.get(model)
    if cached is not None and cached[0] == version:
        return cached[1]
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    key = f"weights:{h.hexdigest()}"
    with _MODEL_KEYS_LOCK:
        _MODEL_KEYS[model] = (version, key)
    return key


def embedding_key(model: Sam, rgb8: np.ndarray, settings: Mapping[str, Any] | None = None) -> str:
    """Cache key of (model weights, encoder speed-ups, image content, normalisation settings),
    hex SHA-256. The speed-ups (:func:`samlib.models.accel.accelerate`) change the features
    by float rounding, so embeddings of the stock and the fast encoder are kept apart."""
    payload = json.dumps(
        {
            "format": _FORMAT,
            "model": model_key(model),
            "encoder": accelerated(model),
            "image": image_hash(rgb8),
            "settings": dict(settings or {}),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class EmbeddingCache:
    """Thread-safe LRU of embeddings in memory, backed by ``.npz`` + ``.json`` files on disk.

    Parameters
    ----------
    directory : path, optional
        Folder for the disk cache; ``None`` keeps embeddings in memory only.
    max_items : int
        How many embeddings the in-memory LRU keeps (a vit_b embedding is 4 MiB).
    encoder : callable, optional
        ``encoder(model, rgb8, key=...) -> Embedding``; defaults to
        :func:`compute_embedding`. Lets a faster, equivalent encoder be plugged in.
    max_disk_bytes : int or None
        After each write, the least recently used entries are deleted until the disk
        cache is at most this size (default 2 GiB, about 500 vit_b embeddings); ``None``
        keeps everything.

    The disk cache never stops the work. An entry that cannot be read or does not fit the
    model (truncated, empty, bad CRC, wrong shape or dtype, broken or missing metadata) is
    deleted and recomputed; a folder that cannot be written (read-only, full) keeps the
    embedding in memory only. Both say so with a :class:`~samlib.errors.CacheWarning`.
    Entries are written metadata first, each file synced before its rename
    (:func:`samlib.files.write_atomic`); temporary files older than :data:`STALE_TEMP_S`,
    left by writers that died, are deleted when the cache opens and after each write.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        max_items: int = 8,
        encoder: Callable[..., Embedding] | None = None,
        max_disk_bytes: int | None = 2 * 1024**3,
    ) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.directory = Path(directory) if directory is not None else None
        self.max_items = int(max_items)
        self.max_disk_bytes = max_disk_bytes
        self.encoder = encoder or compute_embedding
        self._memory: OrderedDict[str, Embedding] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self.encodes = 0  # how many times the encoder actually ran
        if self.directory is not None:
            prune_temp_files(self.directory, STALE_TEMP_S)

    # -- public API ---------------------------------------------------------------------
    def get(
        self, model: Sam, rgb8: np.ndarray, settings: Mapping[str, Any] | None = None
    ) -> Embedding:
        """Return the embedding of ``rgb8`` under ``model``, encoding only on a cache miss.

        ``settings`` (e.g. channel choice and percentiles used to make ``rgb8``) are part
        of the key and recorded in the disk metadata.
        """
        check_rgb8(rgb8)
        key = embedding_key(model, rgb8, settings)
        found = self._lookup(key, model)
        if found is not None:
            return found
        with self._lock_for(key):
            # Another thread may have computed it while we waited.
            found = self._lookup(key, model)
            if found is not None:
                return found
            emb = self.encoder(model, rgb8, key=key)
            with self._lock:
                self.encodes += 1
            self._remember(emb)
            self._save(emb, model, settings)
            return emb

    def __contains__(self, key: str) -> bool:
        with self._lock:
            if key in self._memory:
                return True
        return self._paths(key)[0].exists() if self.directory else False

    def __len__(self) -> int:
        with self._lock:
            return len(self._memory)

    def clear_memory(self) -> None:
        """Forget the in-memory embeddings (disk files stay)."""
        with self._lock:
            self._memory.clear()

    # -- internals ----------------------------------------------------------------------
    def _lock_for(self, key: str) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def _remember(self, emb: Embedding) -> None:
        with self._lock:
            self._memory[emb.key] = emb
            self._memory.move_to_end(emb.key)
            while len(self._memory) > self.max_items:
                old, _ = self._memory.popitem(last=False)
                self._key_locks.pop(old, None)

    def _lookup(self, key: str, model: Sam) -> Embedding | None:
        with self._lock:
            emb = self._memory.get(key)
            if emb is not None:
                self._memory.move_to_end(key)
                if emb.features.device == model.device:
                    return emb
        emb = self._load(key, model)
        if emb is not None:
            self._remember(emb)
        return emb

    def _paths(self, key: str) -> tuple[Path, Path]:
        assert self.directory is not None
        return self.directory / f"{key}.npz", self.directory / f"{key}.json"

    def _load(self, key: str, model: Sam) -> Embedding | None:
        if self.directory is None:
            return None
        npz, meta_path = self._paths(key)
        # The metadata is written first, so an .npz marks a complete entry.
        if not npz.exists():
            return None
        try:
            emb = _read_entry(npz, meta_path, key, model)
        except Exception as exc:  # a damaged file makes zipfile and numpy raise many types
            if npz.exists():  # not deleted meanwhile by another process's pruning
                self._discard(key, exc)
            return None
        try:
            os.utime(npz)  # pruning deletes the least recently used entries first
        except OSError:
            pass
        return emb

    def _discard(self, key: str, reason: Exception) -> None:
        """Delete an unreadable disk entry (it is then recomputed) and say so."""
        npz, meta_path = self._paths(key)
        for path in (npz, meta_path):
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass  # a folder that cannot be written: the save that follows says so
        warnings.warn(
            f"embedding cache entry {npz} is unreadable ({_one_line(reason)}); recomputing it",
            CacheWarning,
            stacklevel=2,
        )

    def _save(self, emb: Embedding, model: Sam, settings: Mapping[str, Any] | None) -> None:
        if self.directory is None:
            return
        npz, meta_path = self._paths(emb.key)
        meta = {
            "format": _FORMAT,
            "model": model_key(model),
            "original_size": list(emb.original_size),
            "input_size": list(emb.input_size),
            "image_sha256": emb.image_sha256,
            "settings": dict(settings or {}),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        features = emb.features.detach().to("cpu").numpy()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomic(meta_path, json.dumps(meta, default=str).encode())
            write_atomic(npz, lambda f: np.savez(f, features=features))
            self._prune(keep=emb.key)
        except OSError as exc:
            warnings.warn(
                f"embedding cache folder {self.directory} cannot be written "
                f"({_one_line(exc)}); the embedding is kept in memory only",
                CacheWarning,
                stacklevel=2,
            )

    def _prune(self, keep: str) -> None:
        """Delete temporary files older than :data:`STALE_TEMP_S`, then the least recently
        used disk entries beyond ``max_disk_bytes`` (never ``keep``)."""
        assert self.directory is not None
        prune_temp_files(self.directory, STALE_TEMP_S)
        if self.max_disk_bytes is None:
            return
        entries = []
        for npz in self.directory.glob("*.npz"):
            try:
                st = npz.stat()
            except OSError:  # removed meanwhile by another process
                continue
            entries.append((st.st_mtime_ns, st.st_size, npz))
        total = sum(size for _, size, _ in entries)
        for _, size, npz in sorted(entries):
            if total <= self.max_disk_bytes:
                break
            if npz.stem == keep:
                continue
            npz.unlink(missing_ok=True)
            npz.with_suffix(".json").unlink(missing_ok=True)
            total -= size


def _read_entry(npz: Path, meta_path: Path, key: str, model: Sam) -> Embedding:
    """Read one disk entry, checked against ``model``; raise unless it is whole and fits.

    The features must be float32 of the shape ``model`` makes, (1, C, h, w); the metadata
    must give (H, W) ``original_size`` and the ``input_size`` that the resize makes of it.
    """
    meta = json.loads(meta_path.read_text())
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ValueError(f"the metadata is not a format-{_FORMAT} object")
    original_size = _size(meta.get("original_size"), "original_size")
    input_size = _size(meta.get("input_size"), "input_size")
    img_size = model.image_encoder.img_size
    if input_size != ResizeLongestSide.get_preprocess_shape(*original_size, img_size):
        raise ValueError(f"input_size {input_size} is not that of a {original_size} image")
    image_sha256 = meta.get("image_sha256", "")
    if not isinstance(image_sha256, str):
        raise ValueError(f"image_sha256 is {image_sha256!r}, not a string")
    # Opened here: np.load leaks the file it opened when it is a damaged zip.
    with open(npz, "rb") as f, np.load(f, allow_pickle=False) as data:
        if data.files != ["features"]:
            raise ValueError(f"the arrays are {data.files}, not ['features']")
        features = data["features"].copy()
    shape = (1, model.prompt_encoder.embed_dim, *model.prompt_encoder.image_embedding_size)
    if features.dtype != np.float32 or features.shape != shape:
        raise ValueError(f"the features are {features.dtype} {features.shape}, not float32 {shape}")
    return Embedding(
        features=torch.from_numpy(features).to(model.device),
        original_size=original_size,
        input_size=input_size,
        key=key,
        image_sha256=image_sha256,
    )


def _size(value: Any, name: str) -> tuple[int, int]:
    """``value`` as an (int, int) size of positive integers, else ValueError naming ``name``."""
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(type(v) is int and v > 0 for v in value)
    ):
        raise ValueError(f"{name} is {value!r}, not two positive integers")
    return (value[0], value[1])


def _one_line(exc: BaseException) -> str:
    """``Type: message`` of an exception, on one line."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())
