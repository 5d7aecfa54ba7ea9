"""One image of a batch: replay the recipe, write its exports, measure its objects.

Runs in the batch's own process or on a Dask worker. Each process loads a model once
(:func:`worker_model`) and keeps one embedding cache; a task never loads a model again.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from distributed import get_worker, worker_client

from samlib.batch.tiled import replay_everything_on
from samlib.batch.workers import ModelSpec, torch_threads, worker_model
from samlib.errors import SamlibError
from samlib.image.io import read_image
from samlib.outputs.measure import measure_records
from samlib.recipe import (
    Recipe,
    needs_embedding,
    pixel_size_of,
    replay_everything,
    write_result,
)
from samlib.records.masks import labels_from_records

__all__ = ["ImageResult", "segment_image"]

#: Files every image of a batch gets, whatever ``--export`` adds.
ALWAYS = ("labels_tiff", "csv", "params")


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
        return _segment(path, name, recipe, spec, out, formats, t0, threads)


def _tiled(recipe: Recipe, model, rgb: np.ndarray, spec: ModelSpec, threads: int) -> list:
    """A tiled image's records: on a Dask worker its tiles become tasks of their own
    (spread over the cluster, a window each); elsewhere they run here, one by one."""
    try:
        get_worker()
    except ValueError:  # not on a Dask worker
        return replay_everything(recipe, model, rgb).kept
    with worker_client() as client:  # leaves this worker's slot to the tile tasks
        return replay_everything_on(client, spec, recipe, rgb, threads=threads).kept


def _segment(path, name, recipe, spec, out, formats, t0, threads) -> ImageResult:
    try:
        image = read_image(path)
        model, cache = worker_model(spec)
        rgb = recipe.image.render(image)
        if needs_embedding(recipe.tiling, rgb.shape[:2]):
            emb = cache.get(model, rgb, recipe.image.as_dict())
            records = replay_everything(recipe, model, rgb, embedding=emb).kept
        else:
            records = _tiled(recipe, model, rgb, spec, threads)
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
