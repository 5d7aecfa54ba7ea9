"""Batch runs: one recipe over a folder or ten thousand images, here or on a Dask cluster.

:func:`find_images` expands the inputs, :func:`run_batch` segments each image as the
recipe says (:func:`segment_image`, one model per process) and writes the per-image files,
the combined tables and the manifest; started again, it skips what is done.
:func:`segment_everything_tiled_on` runs one huge image's tiles as Dask tasks, and so does
a batch for each image of a tiled recipe (:func:`replay_everything_on`).

May import: every subpackage but app and cli, and samlib.recipe.
"""

from __future__ import annotations

from samlib.batch.inputs import IMAGE_SUFFIXES, find_images, output_names
from samlib.batch.run import ALL_DONE, NOTHING_DONE, SOME_FAILED, BatchReport, run_batch
from samlib.batch.task import ImageResult, segment_image
from samlib.batch.tiled import replay_everything_on, segment_everything_tiled_on
from samlib.batch.workers import ModelSpec, use_model, worker_model

__all__ = [
    "ALL_DONE",
    "IMAGE_SUFFIXES",
    "NOTHING_DONE",
    "SOME_FAILED",
    "BatchReport",
    "ImageResult",
    "ModelSpec",
    "find_images",
    "output_names",
    "run_batch",
    "replay_everything_on",
    "segment_everything_tiled_on",
    "segment_image",
    "use_model",
    "worker_model",
]
