"""Parameters of the segment-everything generator: defaults, validation, help texts.

The names and defaults are those of ``SamAutomaticMaskGenerator`` (the workshop's
generator), so code written for it carries over unchanged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
from segment_anything.utils.amg import build_all_layer_point_grids

from samlib.errors import ParameterError

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
#: Largest ``points_per_batch``: 16 times SAM's 64 and 4 times the app's largest choice (256).
#: A batch's prompts are decoded at once (whole batches on GPUs), and each kept candidate is
#: upsampled to the crop in float32 (4 bytes per pixel, 3 masks per prompt), so the batch
#: bounds the memory of one step: 1024 prompts on a 1024 x 1024 crop can reach 12 GiB.
MAX_POINTS_PER_BATCH = 1024

PARAM_HELP: dict[str, str] = {
    "points_per_side": "Grid of N x N point prompts over the image: more points find smaller "
    "objects but take longer (time grows with N squared).",
    "points_per_batch": "How many points the model decodes at once: memory and speed only, "
    "the masks do not change.",
    "pred_iou_thresh": "Keep masks whose self-predicted quality (IoU) is above this: higher "
    "keeps fewer, better masks.",
    "stability_score_thresh": "Keep masks that barely change when the logit cut-off moves: "
    "higher keeps fewer, crisper masks.",
    "stability_score_offset": "How far the cut-off moves when measuring stability: larger is "
    "stricter (needs a re-run of the model).",
    "box_nms_thresh": "Overlap (box IoU) above which the lower-scoring of two masks is dropped "
    "as a duplicate: lower removes more overlaps.",
    "crop_n_layers": "Also segment zoomed-in tiles (layer i has 2^i x 2^i tiles): finds small "
    "objects, costs much more time.",
    "crop_nms_thresh": "Box IoU above which duplicates found in different tiles are merged "
    "(the smaller tile's mask wins).",
    "crop_overlap_ratio": "How much neighbouring tiles overlap, as a fraction of the image side.",
    "crop_n_points_downscale_factor": "Tiles of layer i get points_per_side / factor^i points "
    "per side: higher is faster, may miss small objects.",
    "point_grids": "Explicit point grids (one per crop layer, XY in [0, 1]) instead of "
    "points_per_side.",
    "min_mask_region_area": "Remove islands and fill holes smaller than this many pixels in "
    "each mask (0 = off).",
    "output_mode": "Mask format: 'binary_mask' (H x W bool), 'uncompressed_rle' or 'coco_rle'.",
}


@dataclass(frozen=True)
class GeneratorParams:
    """Every parameter of ``SamAutomaticMaskGenerator``, with the same defaults.

    Coordinates in ``point_grids`` are XY, normalised to [0, 1] of the (crop) image.
    """

    points_per_side: int | None = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    point_grids: tuple[np.ndarray, ...] | None = None
    min_mask_region_area: int = 0
    output_mode: str = "binary_mask"

    def __post_init__(self) -> None:
        _validate(self)

    def replace(self, **changes: Any) -> GeneratorParams:
        """A copy with some parameters changed (validated)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ParameterError(f"unknown generator parameter(s): {sorted(unknown)}")
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (point grids as nested lists)."""
        d = asdict(self)
        if self.point_grids is not None:
            d["point_grids"] = [np.asarray(g).tolist() for g in self.point_grids]
        return d

    def grids(self) -> list[np.ndarray]:
        """Point grids (N_i, 2) XY in [0, 1], one per crop layer, as the stock generator builds."""

        if self.point_grids is not None:
            return [np.asarray(g) for g in self.point_grids]
        return build_all_layer_point_grids(
            self.points_per_side, self.crop_n_layers, self.crop_n_points_downscale_factor
        )

    @classmethod
    def from_kwargs(cls, **params: Any) -> GeneratorParams:
        """Build from keyword arguments; unknown names raise :class:`ParameterError`.

        Passing ``point_grids`` alone implies ``points_per_side=None``.
        """
        unknown = set(params) - {f.name for f in fields(cls)}
        if unknown:
            raise ParameterError(
                f"unknown generator parameter(s): {sorted(unknown)}; known: "
                f"{[f.name for f in fields(cls)]}"
            )
        if params.get("point_grids") is not None and "points_per_side" not in params:
            params["points_per_side"] = None
        if params.get("point_grids") is not None:
            params["point_grids"] = tuple(
                np.asarray(g, dtype=np.float64) for g in params["point_grids"]
            )
        return cls(**params)


def _int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ParameterError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ParameterError(f"{name} must be {rng}, got {value!r}")


def _float(name: str, value: Any, low: float, high: float, *, open_low: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ParameterError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v > high or v < low or (open_low and v == low):
        lo = "(" if open_low else "["
        raise ParameterError(f"{name} must be in {lo}{low}, {high}], got {value!r}")


def _validate(p: GeneratorParams) -> None:
    if (p.points_per_side is None) == (p.point_grids is None):
        raise ParameterError(
            "give exactly one of points_per_side and point_grids "
            f"(got points_per_side={p.points_per_side!r}, point_grids "
            f"{'set' if p.point_grids is not None else 'None'})"
        )
    if p.points_per_side is not None:
        _int("points_per_side", p.points_per_side, 1, 1024)
    _int("points_per_batch", p.points_per_batch, 1, MAX_POINTS_PER_BATCH)
    _float("pred_iou_thresh", p.pred_iou_thresh, 0.0, 1.0)
    _float("stability_score_thresh", p.stability_score_thresh, 0.0, 1.0)
    _float("stability_score_offset", p.stability_score_offset, 0.0, 1e3, open_low=True)
    _float("box_nms_thresh", p.box_nms_thresh, 0.0, 1.0)
    _int("crop_n_layers", p.crop_n_layers, 0, 6)
    _float("crop_nms_thresh", p.crop_nms_thresh, 0.0, 1.0)
    _float("crop_overlap_ratio", p.crop_overlap_ratio, 0.0, 0.99)
    _int("crop_n_points_downscale_factor", p.crop_n_points_downscale_factor, 1)
    _int("min_mask_region_area", p.min_mask_region_area, 0)
    if p.output_mode not in OUTPUT_MODES:
        raise ParameterError(f"output_mode must be one of {OUTPUT_MODES}, got {p.output_mode!r}")
    if p.points_per_side is not None:
        n = int(p.points_per_side / p.crop_n_points_downscale_factor**p.crop_n_layers)
        if n < 1:
            raise ParameterError(
                f"points_per_side={p.points_per_side} leaves no points in crop layer "
                f"{p.crop_n_layers} with crop_n_points_downscale_factor="
                f"{p.crop_n_points_downscale_factor}"
            )
    if p.point_grids is not None:
        if len(p.point_grids) < p.crop_n_layers + 1:
            raise ParameterError(
                f"point_grids has {len(p.point_grids)} grid(s), crop_n_layers="
                f"{p.crop_n_layers} needs {p.crop_n_layers + 1}"
            )
        for i, g in enumerate(p.point_grids):
            g = np.asarray(g)
            if g.ndim != 2 or g.shape[1] != 2 or len(g) == 0:
                raise ParameterError(f"point_grids[{i}] must be (N, 2) XY, got shape {g.shape}")
            if not np.all(np.isfinite(g)) or g.min() < 0 or g.max() > 1:
                raise ParameterError(f"point_grids[{i}] must lie in [0, 1] (normalised XY)")


def check_floor(name: str, value: Any) -> float:
    """Return a decode floor (``iou_floor`` or ``stability_floor``) as a float in [0, 1].

    :class:`ParameterError` for anything else, NaN and infinity included: a NaN floor
    would compare false with every threshold and let any of them through unchecked.
    """
    _float(name, value, 0.0, 1.0)
    return float(value)
