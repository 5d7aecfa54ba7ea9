"""What each process of a batch keeps: one model (loaded once) and one embedding cache.

A Dask worker, or the batch's own process, loads the model of a :class:`ModelSpec` on
its first task (:func:`worker_model`) and every later task reuses it; never one model per
task.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from samlib.models.embeddings import EmbeddingCache, default_cache_dir
from samlib.models.loading import load_model

__all__ = ["ModelSpec", "torch_threads", "use_model", "worker_model"]


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the batch's model (once per process)."""

    name: str
    device: str | None = None
    allow_pickle: bool = False


_LOCK = threading.Lock()
_MODELS: dict[ModelSpec, Any] = {}
_CACHES: dict[ModelSpec, EmbeddingCache] = {}


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch threads (then the count before): the same number of
    threads gives the same float sums, wherever an image runs."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def worker_model(spec: ModelSpec):
    """The model of ``spec``, loaded once per process (as the app loads it), and its
    embedding cache."""
    with _LOCK:
        if spec not in _MODELS:
            model = load_model(
                spec.name, spec.device, allow_pickle=spec.allow_pickle, fast_encoder=True
            )
            _keep(spec, model)
        return _MODELS[spec], _CACHES[spec]


def use_model(spec: ModelSpec, model) -> None:
    """Let this process's batch tasks use an already loaded ``model`` for ``spec`` (the
    app's shared model), instead of loading a second copy."""
    with _LOCK:
        if _MODELS.get(spec) is not model:
            _keep(spec, model)


def _keep(spec: ModelSpec, model) -> None:
    _MODELS[spec] = model
    folder = None if os.environ.get("SAMLIB_NO_DISK_CACHE") else default_cache_dir()
    _CACHES[spec] = EmbeddingCache(folder, max_items=2)
