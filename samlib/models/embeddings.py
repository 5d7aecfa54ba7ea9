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

from samlib.errors import ParameterError
from samlib.files import write_atomic
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
]

# Bump when the on-disk layout or the way features are computed changes.
_FORMAT = 1


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
        emb = self._load(key, model.device)
        if emb is not None:
            self._remember(emb)
        return emb

    def _paths(self, key: str) -> tuple[Path, Path]:
        assert self.directory is not None
        return self.directory / f"{key}.npz", self.directory / f"{key}.json"

    def _load(self, key: str, device: torch.device) -> Embedding | None:
        if self.directory is None:
            return None
        npz, meta_path = self._paths(key)
        if not (npz.exists() and meta_path.exists()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            with np.load(npz, allow_pickle=False) as data:
                features = torch.from_numpy(data["features"].copy())
            if meta.get("format") != _FORMAT or features.ndim != 4:
                return None
        except (OSError, ValueError, KeyError):
            # A damaged cache file is not an error: it is recomputed and overwritten.
            return None
        try:
            os.utime(npz)  # pruning deletes the least recently used entries first
        except OSError:
            pass
        return Embedding(
            features=features.to(device),
            original_size=tuple(meta["original_size"]),
            input_size=tuple(meta["input_size"]),
            key=key,
            image_sha256=str(meta.get("image_sha256", "")),
        )

    def _save(self, emb: Embedding, model: Sam, settings: Mapping[str, Any] | None) -> None:
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
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
        write_atomic(npz, lambda f: np.savez(f, features=features))
        write_atomic(meta_path, json.dumps(meta, default=str).encode())
        self._prune(keep=emb.key)

    def _prune(self, keep: str) -> None:
        """Delete the oldest disk entries beyond ``max_disk_bytes`` (never ``keep``)."""
        if self.max_disk_bytes is None or self.directory is None:
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
