"""One segment-everything run of the app: decoded once, re-filtered live.

:func:`run_everything` does the expensive part (the model over the point grid) and keeps
the candidates; :func:`refilter_run` and :func:`area_filter` are the cheap parts that the
page's sliders call on every change, without the model. Both are the steps a recipe
replays (:func:`samlib.recipe.decode_everything`, :func:`samlib.recipe.live_filter`),
for the whole image or tile by tile.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from samlib.app.session import WorkImage
from samlib.everything.candidates import Candidates
from samlib.everything.params import GeneratorParams
from samlib.recipe import EverythingSettings, LiveFilters, Tiling, decode_everything, live_filter
from samlib.records.filters import FilterResult, filter_records
from samlib.tiling.stitch import Tile
from samlib.tiling.tiles import TiledCandidates


@dataclass(frozen=True, eq=False)
class EverythingRun:
    """One expensive segment-everything run of one image, kept for cheap re-filtering.

    Attributes
    ----------
    image_key : str
        :attr:`WorkImage.key` of the image the run belongs to.
    model_name, model_sha256 : str
    settings : EverythingSettings
        What the run decoded with: generator parameters (grid, crops, stability offset; in
        fast mode also the thresholds it decoded at), fast mode and floors.
    tiling : Tiling or None
        The tiles with a halo the image was cut into (None: the whole image).
    candidates : Candidates or TiledCandidates
        Their ``iou_floor`` and ``stability_floor`` are the lowest live thresholds.
    grid_points : (N, 2) float
        XY image pixels of the point grid of the whole image, or of every tile (overlay).
    seconds : float
        Wall time of the run.
    """

    image_key: str
    model_name: str
    model_sha256: str
    settings: EverythingSettings
    tiling: Tiling | None
    candidates: Candidates | TiledCandidates
    grid_points: np.ndarray
    seconds: float

    @property
    def params(self) -> GeneratorParams:
        """The generator parameters of the run."""
        return self.settings.generator

    @property
    def fast(self) -> bool:
        """Whether the approximate fast mode decoded it."""
        return self.settings.fast

    @property
    def tiles(self) -> tuple[Tile, ...]:
        """The tiles of a tiled run (empty for a whole-image run)."""
        return getattr(self.candidates, "tiles", ())

    @property
    def n_candidates(self) -> int:
        """Candidates decoded (above the floors)."""
        return len(self.candidates)


def run_everything(
    model,
    work: WorkImage,
    params: dict[str, Any],
    *,
    iou_floor: float | None = None,
    stability_floor: float | None = None,
    fast: bool = False,
    tiling: Tiling | None = None,
    embedding=None,
    progress=None,
) -> EverythingRun:
    """Decode every grid prompt once (the expensive part of segment everything).

    ``params`` are :class:`~samlib.everything.params.GeneratorParams` fields (grid, crops,
    stability offset, points_per_batch, min_mask_region_area, output_mode).
    ``iou_floor``/``stability_floor`` are the lowest thresholds the live filters may use.
    ``fast=True`` uses the approximate fast mode (:mod:`samlib.everything.fastmode`): it
    decodes at the thresholds in ``params``, which then are the floors. ``tiling`` cuts
    the image into tiles with a halo (``progress`` then counts tiles, not point batches).
    """
    settings = EverythingSettings(
        generator=GeneratorParams.from_kwargs(**params),
        fast=fast,
        iou_floor=iou_floor,
        stability_floor=stability_floor,
    )
    t0 = time.perf_counter()
    cands = decode_everything(
        settings, model, work.rgb8, tiling=tiling, embedding=embedding, progress=progress
    )
    seconds = time.perf_counter() - t0
    grid = settings.generator.grids()[0]
    if isinstance(cands, TiledCandidates):
        grid = np.concatenate([grid * [t.shape[1], t.shape[0]] + t.window[:2] for t in cands.tiles])
    else:
        w, h = work.size_xy
        grid = grid * np.array([w, h], dtype=float)
    info = getattr(model, "samlib_info", None)
    return EverythingRun(
        work.key,
        getattr(info, "name", "model"),
        getattr(info, "sha256", ""),
        settings,
        tiling,
        cands,
        grid,
        seconds,
    )


def refilter_run(run: EverythingRun, **thresholds: float) -> FilterResult:
    """Apply quality thresholds and NMS to a run's candidates (no model call).

    ``thresholds``: any of pred_iou_thresh, stability_score_thresh, box_nms_thresh,
    crop_nms_thresh; the others stay those the run decoded with. Thresholds below the
    run's floors are raised to them. Nothing is dropped yet: the whole-image and area
    filters come next (:func:`area_filter`).
    """
    return live_filter(
        run.candidates, LiveFilters.from_generator(run.params, **thresholds), area=False
    )


def area_filter(
    result: FilterResult, area_range: tuple[float, float], *, drop_whole_image: bool = True
) -> FilterResult:
    """Keep records within ``area_range`` (px, inclusive), optionally without outliers."""
    return filter_records(
        result.records,
        min_area=area_range[0],
        max_area=area_range[1],
        drop_whole_image=drop_whole_image,
        n_candidates=result.n_candidates,
    )
