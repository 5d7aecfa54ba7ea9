"""One image of a batch: replay the recipe, write its exports, measure its objects.

Runs in the batch's own process or on a Dask worker. Each process loads a model once
(:func:`worker_model`) and keeps one embedding cache; a task never loads a model again.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from samlib.errors import SamlibError
from samlib.image.io import read_image
from samlib.models.embeddings import EmbeddingCache, default_cache_dir
from samlib.models.loading import load_model
from samlib.outputs.measure import measure_records
from samlib.recipe import Recipe, pixel_size_of, replay_everything, write_result
from samlib.records.masks import labels_from_records

__all__ = [
    "ImageResult",
    "ModelSpec",
    "segment_image",
    "torch_threads",
    "use_model",
    "worker_model",
]

#: Files every image of a batch gets, whatever ``--export`` adds.
ALWAYS = ("labels_tiff", "csv", "params")


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the batch's model (once per process)."""

    name: str
    device: str | None = None
    allow_pickle: bool = False


@dataclass
class ImageResult:
    """What one image gave: status, counts, timing, the files written, the error if any."""

    path: str
    name: str
    status: str  # "done" or "failed"
    n_masks: int = 0
    coverage: float = 0.0
    median_area: float = float("nan")
    seconds: float = 0.0
    error: str = ""
    files: list[str] = field(default_factory=list)
    worker: int = 0

    def row(self) -> dict[str, Any]:
        """The image's row of the batch summary."""
        return {
            "image": self.name,
            "path": self.path,
            "status": self.status,
            "n_masks": self.n_masks,
            "coverage": self.coverage,
            "median_area_px": self.median_area,
            "seconds": round(self.seconds, 3),
            "error": self.error,
        }


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


def segment_image(
    path: str,
    name: str,
    recipe: Recipe,
    spec: ModelSpec,
    out: str,
    formats: tuple[str, ...],
    threads: int,
) -> ImageResult:
    """Segment one image as ``recipe`` says and write its files into ``out/name``.

    Never raises for a bad image: the error becomes the result's one-line ``error``.
    """
    t0 = time.perf_counter()
    with torch_threads(threads):
        return _segment(path, name, recipe, spec, out, formats, t0)


def _segment(path, name, recipe, spec, out, formats, t0) -> ImageResult:
    try:
        image = read_image(path)
        model, cache = worker_model(spec)
        rgb = recipe.image.render(image)
        emb = cache.get(model, rgb, recipe.image.as_dict())
        records = replay_everything(recipe, model, rgb, embedding=emb).kept
        pixel_size = pixel_size_of(recipe, image)
        table = measure_records(records, image, plane=recipe.image.plane, pixel_size_um=pixel_size)
        table.insert(0, "image", name)
        written = write_result(
            Path(out) / name,
            recipe,
            image,
            rgb,
            records,
            image_name=Path(path).name,
            source="samlib batch",
            formats=tuple(dict.fromkeys((*ALWAYS, *formats))),
            table=table,
        )
        labels = labels_from_records(records, shape=rgb.shape[:2])
        areas = [int(r["area"]) for r in records]
        return ImageResult(
            path=path,
            name=name,
            status="done",
            n_masks=len(records),
            coverage=float((labels > 0).mean()),
            median_area=float(np.median(areas)) if areas else float("nan"),
            seconds=time.perf_counter() - t0,
            files=[str(p) for p in written.values()],
            worker=os.getpid(),
        )
    except (SamlibError, OSError, ValueError) as exc:
        return _failed(path, name, t0, " ".join(str(exc).split()) or type(exc).__name__)
    except Exception as exc:  # a bug, not a bad image: keep its place in the traceback
        where = traceback.extract_tb(exc.__traceback__)[-1]
        text = f"{type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})"
        return _failed(path, name, t0, " ".join(text.split()))


def _failed(path: str, name: str, t0: float, error: str) -> ImageResult:
    return ImageResult(
        path, name, "failed", seconds=time.perf_counter() - t0, error=error, worker=os.getpid()
    )
