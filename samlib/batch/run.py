"""A batch run: one recipe over many images, in this process or on a Dask cluster.

Nothing is lost: every file is written under a temporary name and renamed into place, the
manifest (``manifest.json``) is rewritten after each image, an image whose files and
manifest entry exist is skipped when the run is started again (``resume``), and a bad
image is recorded as failed with its reason while the others go on. On Dask, a worker
that dies has its images run again elsewhere (the scheduler's own retry).

Output folder::

    OUT/<image>/labels.tif, measurements.csv, params.json (+ the --export formats)
    OUT/objects.parquet, OUT/objects.csv   every object of every image, "image" column
    OUT/summary.csv                        one row per image: count, coverage, area, time
    OUT/manifest.json                      recipe, model, versions, times, status per image
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from distributed import Client, LocalCluster, as_completed

from samlib.batch.inputs import output_names
from samlib.batch.task import ImageResult, segment_image
from samlib.batch.workers import ModelSpec
from samlib.errors import RecipeError
from samlib.files import write_atomic
from samlib.outputs.export import EXPORTS, check_formats
from samlib.outputs.provenance import now, provenance
from samlib.recipe import Recipe

__all__ = ["BatchReport", "run_batch"]

#: Exit statuses of ``samlib batch``.
ALL_DONE, SOME_FAILED, NOTHING_DONE = 0, 3, 4


@dataclass
class BatchReport:
    """What a run did: per-image results (this run's and the resumed ones)."""

    results: list[ImageResult]
    skipped: int
    dashboard: str | None = None

    @property
    def n_failed(self) -> int:
        return sum(r.status == "failed" for r in self.results)

    @property
    def exit_status(self) -> int:
        """0 all done, 3 some failed, 4 nothing done."""
        if not self.n_failed:
            return ALL_DONE
        return NOTHING_DONE if self.n_failed == len(self.results) else SOME_FAILED


def run_batch(
    paths: Sequence[Path],
    recipe: Recipe,
    out: str | os.PathLike[str],
    *,
    model: ModelSpec,
    formats: Sequence[str] = (),
    resume: bool = True,
    workers: int | None = 0,
    threads_per_worker: int = 1,
    scheduler: str | None = None,
    client=None,
    progress: Callable[[int, int, ImageResult], None] | None = None,
) -> BatchReport:
    """Segment every image of ``paths`` with ``recipe``; write files, tables, manifest.

    Parameters
    ----------
    workers : int or None
        0 (default) runs the images one by one in this process; N starts a Dask
        ``LocalCluster`` of N worker processes; None sizes it to the machine (cores /
        ``threads_per_worker``).
    threads_per_worker : int
        Torch threads per image (also in this process, so every mode gives the same bits).
    scheduler : str, optional
        Address of a running Dask scheduler (e.g. one started by dask-jobqueue on SLURM).
    client : distributed.Client, optional
        A client to use as it is (tests, notebooks).
    progress : callable, optional
        ``progress(done, total, result)`` after each image.
    """
    if recipe.kind != "everything":
        raise RecipeError("batch runs replay segment-everything recipes, not prompts")
    check_formats(formats)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = output_names(paths)
    manifest = _Manifest(out, recipe, model)
    done = manifest.finished(names) if resume else {}
    todo = [p for p in paths if p not in done]
    results = {p: done[p] for p in paths if p in done}
    args = (recipe, model, str(out), tuple(formats), threads_per_worker)

    def finished(result: ImageResult) -> None:
        results[Path(result.path)] = result
        manifest.record(result)
        if progress is not None:
            progress(len(results), len(paths), result)

    dashboard = None
    if workers == 0 and scheduler is None and client is None:
        for p in todo:
            finished(segment_image(str(p), names[p], *args))
    elif todo:
        dashboard = _run_on_dask(
            todo, names, args, finished, workers, threads_per_worker, scheduler, client
        )
    ordered = [results[p] for p in paths]
    manifest.close(ordered)
    _write_tables(out, ordered)
    return BatchReport(ordered, skipped=len(done), dashboard=dashboard)


def _run_on_dask(todo, names, args, finished, workers, threads, scheduler, client) -> str:
    cluster = own = None
    if client is None:
        if scheduler is None:
            n = workers or max(1, (os.cpu_count() or 1) // threads)
            cluster = LocalCluster(
                n_workers=n, threads_per_worker=threads, processes=True, dashboard_address=":0"
            )
        client = own = Client(scheduler or cluster)
    try:
        run = uuid.uuid4().hex[:8]  # keys of this run alone, on a long-lived scheduler too
        futures = [
            client.submit(segment_image, str(p), names[p], *args, key=f"samlib-{run}-{i}")
            for i, p in enumerate(todo)
        ]
        for future in as_completed(futures):
            finished(future.result())
        return client.dashboard_link
    finally:
        if own is not None:
            own.close()
        if cluster is not None:
            cluster.close()


class _Manifest:
    """``manifest.json``: rewritten (atomically) after every image."""

    def __init__(self, out: Path, recipe: Recipe, model: ModelSpec) -> None:
        self.path = out / "manifest.json"
        self.recipe = {k: v for k, v in recipe.to_dict().items() if k != "provenance"}
        old = self._read()
        same = old.get("recipe") == self.recipe and old.get("model", {}).get("name") == model.name
        self.images: dict[str, dict[str, Any]] = dict(old.get("images", {})) if same else {}
        self.data = {
            "recipe": self.recipe,
            "model": {"name": model.name, "sha256": recipe.model.sha256},
            "versions": provenance()["versions"],
            "started": now(),
            "finished": None,
            "images": self.images,
        }

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def finished(self, names: dict[Path, str]) -> dict[Path, ImageResult]:
        """Images whose manifest entry says done and whose files all exist."""
        out = {}
        for p, name in names.items():
            entry = self.images.get(name)
            if entry and entry["status"] == "done" and entry["path"] == str(p):
                if all(Path(f).is_file() for f in entry["files"]):
                    out[p] = ImageResult(**entry)
        return out

    def record(self, result: ImageResult) -> None:
        self.images[result.name] = asdict(result)
        self._write()

    def close(self, results: list[ImageResult]) -> None:
        self.data["finished"] = now()
        self.data["status"] = {
            "done": sum(r.status == "done" for r in results),
            "failed": sum(r.status == "failed" for r in results),
        }
        self._write()

    def _write(self) -> None:
        write_atomic(self.path, json.dumps(self.data, indent=1, default=str).encode())


def _write_tables(out: Path, results: list[ImageResult]) -> None:
    """The combined per-object table (Parquet and CSV) and the per-image summary."""
    tables = []
    csv_name = EXPORTS["csv"].file_name
    for r in results:
        if r.status == "done" and r.n_masks:
            tables.append(pd.read_csv(out / r.name / csv_name))
    objects = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame({"image": []})
    for name, data in (
        ("objects.parquet", objects.to_parquet(index=False)),
        ("objects.csv", objects.to_csv(index=False).encode()),
        ("summary.csv", pd.DataFrame([r.row() for r in results]).to_csv(index=False).encode()),
    ):
        write_atomic(out / name, data)
