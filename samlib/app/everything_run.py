"""One segment-everything run of the app: decoded once, re-filtered live.

:func:`run_everything` does the expensive part (the model over the point grid) and keeps
the candidates; :func:`refilter_run` and :func:`area_filter` are the cheap parts that the
page's sliders call on every change, without the model. Both are the library's own steps
(:func:`samlib.everything.generate.generate_candidates`,
:func:`samlib.everything.refilter.refilter_live`, :func:`samlib.records.filters.filter_records`),
the ones a recipe replays.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from samlib.app.session import WorkImage
from samlib.everything.candidates import Candidates
from samlib.everything.generate import generate_candidates
from samlib.everything.params import GeneratorParams
from samlib.everything.refilter import refilter_live
from samlib.records.filters import FilterResult, filter_records


@dataclass(frozen=True, eq=False)
class EverythingRun:
    """One expensive segment-everything run of one image, kept for cheap re-filtering.

    Attributes
    ----------
    image_key : str
        :attr:`WorkImage.key` of the image the run belongs to.
    model_name, model_sha256 : str
    params : GeneratorParams
        What the run decoded with (grid, crops, stability offset; in fast mode also the
        thresholds it decoded at).
    fast : bool
        Whether the approximate fast mode decoded it.
    candidates : Candidates
        Their ``iou_floor`` and ``stability_floor`` are the lowest live thresholds.
    grid_points : (N, 2) float
        XY image pixels of the whole-image point grid (for the overlay).
    seconds : float
        Wall time of the run.
    """

    image_key: str
    model_name: str
    model_sha256: str
    params: GeneratorParams
    fast: bool
    candidates: Candidates
    grid_points: np.ndarray
    seconds: float

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
    embedding=None,
    progress=None,
) -> EverythingRun:
    """Decode every grid prompt once (the expensive part of segment everything).

    ``params`` are :class:`~samlib.everything.params.GeneratorParams` fields (grid, crops,
    stability offset, points_per_batch, min_mask_region_area, output_mode).
    ``iou_floor``/``stability_floor`` are the lowest thresholds the live filters may use.
    ``fast=True`` uses the approximate fast mode (:mod:`samlib.everything.fastmode`): it
    decodes at the thresholds in ``params``, which then are the floors.
    """
    p = GeneratorParams.from_kwargs(**params)
    t0 = time.perf_counter()
    cands = generate_candidates(
        model,
        work.rgb8,
        p,
        fast=fast,
        iou_floor=iou_floor,
        stability_floor=stability_floor,
        embedding=embedding,
        progress=progress,
    )
    seconds = time.perf_counter() - t0
    w, h = work.size_xy
    grid = p.grids()[0] * np.array([w, h], dtype=float)
    info = getattr(model, "samlib_info", None)
    return EverythingRun(
        work.key,
        getattr(info, "name", "model"),
        getattr(info, "sha256", ""),
        p,
        fast,
        cands,
        grid,
        seconds,
    )


def refilter_run(run: EverythingRun, **thresholds: float) -> FilterResult:
    """Apply quality thresholds and NMS to a run's candidates (no model call).

    ``thresholds``: any of pred_iou_thresh, stability_score_thresh, box_nms_thresh,
    crop_nms_thresh. Thresholds below the run's floors are raised to them. Nothing is
    dropped yet: the whole-image and area filters come next (:func:`area_filter`).
    """
    records = refilter_live(run.candidates, **thresholds)
    return filter_records(
        records,
        drop_whole_image=False,
        image_shape=tuple(run.candidates.image_size),
        n_candidates=run.n_candidates,
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
