"""One segment-everything run of the app: decoded once, re-filtered live.

:func:`run_everything` does the expensive part (the model over the point grid) and keeps
the candidates; :func:`refilter_run` and :func:`area_filter` are the cheap parts that the
page's sliders call on every change, without the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from samlib.app.session import WorkImage


@dataclass(frozen=True, eq=False)
class EverythingRun:
    """One expensive segment-everything run of one image, kept for cheap re-filtering.

    Attributes
    ----------
    image_key : str
        :attr:`WorkImage.key` of the image the run belongs to.
    model_name, model_sha256 : str
    params : dict
        Decode parameters (grid, crops, stability offset, floors), plain JSON.
    candidates : samlib.everything.candidates.Candidates
    grid_points : (N, 2) float
        XY image pixels of the whole-image point grid (for the overlay).
    seconds : float
        Wall time of the run.
    """

    image_key: str
    model_name: str
    model_sha256: str
    params: dict[str, Any]
    candidates: Any
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
    ``fast=True`` uses the approximate fast mode (:mod:`samlib.everything.fastmode`): it decodes at
    the thresholds in ``params``, which then are the floors.
    """
    import time

    from samlib.everything.generate import generate_candidates
    from samlib.everything.params import GeneratorParams

    p = GeneratorParams.from_kwargs(**params)
    t0 = time.perf_counter()
    if fast:
        from samlib.everything.fastmode import fast_candidates

        cands = fast_candidates(model, work.rgb8, p, embedding=embedding, progress=progress)
    else:
        cands = generate_candidates(
            model,
            work.rgb8,
            p,
            iou_floor=iou_floor,
            stability_floor=stability_floor,
            embedding=embedding,
            progress=progress,
        )
    seconds = time.perf_counter() - t0
    w, h = work.size_xy
    grid = p.grids()[0] * np.array([w, h], dtype=float)
    info = getattr(model, "samlib_info", None)
    record = {
        **p.to_dict(),
        "iou_floor": cands.iou_floor,
        "stability_floor": cands.stability_floor,
        "fast_mode": fast,
    }
    return EverythingRun(
        work.key,
        getattr(info, "name", "model"),
        getattr(info, "sha256", ""),
        record,
        cands,
        grid,
        seconds,
    )


@dataclass(frozen=True, eq=False)
class FilteredRun:
    """Records of a run after the live filters, and what each filter step kept.

    ``records`` passed the quality thresholds and NMS; ``outliers`` (indices into
    ``records``) are whole-image masks; ``keep`` (bool per record) is the final selection.
    """

    n_candidates: int
    records: list[dict[str, Any]]
    areas: np.ndarray
    outliers: np.ndarray
    keep: np.ndarray
    n_after_outliers: int

    @property
    def kept(self) -> list[dict[str, Any]]:
        """The records that pass every filter, in generator order."""
        return [r for r, k in zip(self.records, self.keep, strict=True) if k]

    def area_bounds(self, drop_whole_image: bool = True) -> tuple[int, int]:
        """(min, max) area in px of the records, without whole-image outliers if dropped."""
        from samlib.records.filters import area_range

        return area_range(self.records, self.outliers if drop_whole_image else ())

    def status(self) -> np.ndarray:
        """Per record: ``"kept"``, ``"whole image"`` (excluded) or ``"outside area range"``."""
        out = np.where(self.keep, "kept", "outside area range").astype(object)
        excluded = np.zeros(len(self.records), dtype=bool)
        excluded[self.outliers] = True
        out[excluded & ~self.keep] = "whole image"
        return out


def refilter_run(run: EverythingRun, **thresholds: float) -> FilteredRun:
    """Apply quality thresholds and NMS to a run's candidates (no model call).

    ``thresholds``: any of pred_iou_thresh, stability_score_thresh, box_nms_thresh,
    crop_nms_thresh. Thresholds below the run's floors are raised to them.
    """
    from samlib.everything.generate import refilter
    from samlib.records.filters import record_areas, whole_image_outliers

    t = dict(thresholds)
    if "pred_iou_thresh" in t:
        t["pred_iou_thresh"] = max(t["pred_iou_thresh"], run.candidates.iou_floor)
    if "stability_score_thresh" in t:
        t["stability_score_thresh"] = max(
            t["stability_score_thresh"], run.candidates.stability_floor
        )
    records = refilter(run.candidates, **t)
    shape = tuple(run.candidates.image_size)
    outliers = whole_image_outliers(records, shape)
    keep = np.ones(len(records), dtype=bool)
    return FilteredRun(
        run.n_candidates, records, record_areas(records), outliers, keep, len(records)
    )


def area_filter(
    result: FilteredRun, area_range: tuple[float, float], *, drop_whole_image: bool = True
) -> FilteredRun:
    """Keep records within ``area_range`` (px, inclusive), optionally without outliers."""
    from samlib.records.filters import area_keep

    keep = area_keep(result.areas, area_range[0], area_range[1])
    not_outlier = np.ones(len(result.records), dtype=bool)
    if drop_whole_image:
        not_outlier[result.outliers] = False
    return FilteredRun(
        result.n_candidates,
        result.records,
        result.areas,
        result.outliers,
        keep & not_outlier,
        int(not_outlier.sum()),
    )
