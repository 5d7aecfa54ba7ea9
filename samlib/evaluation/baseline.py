"""A classical baseline beside SAM: threshold, distance transform, watershed.

The textbook recipe for bright nuclei on a dark background (scikit-image's watershed
example): pixels brighter than a threshold (Otsu's by default) are foreground; the distance
of each foreground pixel to the background peaks at object centres; one seed per peak at
least ``min_distance`` pixels from the next, and a watershed of the inverted distance from
those seeds splits touching objects along their waist. Objects smaller than ``min_area``
are dropped. It has no model, so it shows a class what SAM adds and where a threshold is
enough. Objects darker than their background (bright-field) are background to it.

The output is the project's mask records (:func:`samlib.records.build.mask_record`), so every
export, measurement and evaluation takes them unchanged. The baseline has no quality scores:
``predicted_iou`` and ``stability_score`` are 1.0, so SAM's quality filters keep every object.

On the bundled DSB2018 sample (125 nuclei, its default display rendering) the defaults give
F1 0.71 at IoU 0.5 (123 objects, precision 0.72, recall 0.70) and DSB2018 AP 0.27 (IoU 0.5 to
0.95), mean matched IoU 0.75; the bundled demo model's segment everything scores F1 0.86,
AP 0.52 there (docs/demo-model.md). ``min_distance`` 7 and ``min_area`` 20 were picked on this
image from a sweep of 2..10 px and 0..30 px, so these are the baseline at its best on it, not
held out::

    python - <<'EOF'
    from samlib.app.session import prepare_image
    from samlib.datasets.samples import load_sample
    from samlib.evaluation import BaselineParams, evaluate, segment_classical
    image, gt, _ = load_sample("DSB2018 nuclei")
    rgb = prepare_image(image).rgb8
    print(evaluate(segment_classical(rgb, BaselineParams()), gt).summary())
    EOF
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.segmentation import relabel_sequential, watershed

from samlib.errors import ParameterError
from samlib.image.display import to_rgb8
from samlib.records.build import mask_box, mask_record

OTSU = "otsu"

BASELINE_HELP: dict[str, str] = {
    "threshold": "Grey level (0..255, as displayed) above which a pixel is an object; "
    "'otsu' picks the level that best separates the two brightness populations.",
    "min_distance": "Pixels between two watershed seeds: smaller splits touching objects "
    "more eagerly (and cuts elongated ones), larger merges them.",
    "min_area": "Objects smaller than this many pixels are dropped as noise (0 keeps all).",
}


@dataclass(frozen=True)
class BaselineParams:
    """The three parameters of :func:`segment_classical` (help: :data:`BASELINE_HELP`).

    Attributes
    ----------
    threshold : "otsu" or float
        Foreground is grey > threshold, grey in 0..255 (see :func:`grey_of`).
    min_distance : int
        Minimum distance between watershed seeds, pixels (>= 1).
    min_area : int
        Smallest object kept, pixels (>= 0).
    """

    threshold: str | float = OTSU
    min_distance: int = 7
    min_area: int = 20

    def __post_init__(self) -> None:
        t = self.threshold
        if isinstance(t, str):
            if t != OTSU:
                raise ParameterError(f"threshold must be 'otsu' or a number in [0, 255], got {t!r}")
        elif (
            isinstance(t, bool)
            or not isinstance(t, int | float | np.integer | np.floating)
            or not (math.isfinite(t) and 0 <= t <= 255)
        ):
            raise ParameterError(f"threshold must be 'otsu' or a number in [0, 255], got {t!r}")
        _check_int("min_distance", self.min_distance, 1)
        _check_int("min_area", self.min_area, 0)


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ParameterError(f"{name} must be an integer >= {low}, got {value!r}")


def grey_of(image: np.ndarray) -> np.ndarray:
    """The ``(H, W)`` float64 grey, 0..255, that the baseline thresholds.

    An ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` uint8 image is taken as displayed (RGB
    averaged over its channels); any other image is first rendered with
    :func:`samlib.image.display.to_rgb8`'s defaults (percentile scaling).
    """
    if not isinstance(image, np.ndarray):
        raise ParameterError(f"image must be a NumPy array, got {type(image).__name__}")
    shown = image.dtype == np.uint8 and (
        image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3))
    )
    rgb = image if shown else to_rgb8(image)
    grey = rgb.astype(np.float64)
    return grey.mean(axis=2) if grey.ndim == 3 else grey


def foreground_threshold(grey: np.ndarray, params: BaselineParams) -> float:
    """The grey level (0..255) above which :func:`classical_labels` calls a pixel object."""
    if params.threshold == OTSU:
        return float(threshold_otsu(grey))
    return float(params.threshold)


def classical_labels(image: np.ndarray, params: BaselineParams | None = None) -> np.ndarray:
    """Label image ``(H, W)`` int32 of the baseline's objects (0 = background, 1..N).

    ``image``: as :func:`grey_of` takes it. Objects are numbered in the order of their seeds,
    the most interior (largest distance to the background) first.
    """
    params = params or BaselineParams()
    grey = grey_of(image)
    foreground = grey > foreground_threshold(grey, params)
    if not foreground.any():
        return np.zeros(grey.shape, np.int32)
    distance = ndi.distance_transform_edt(foreground)
    components, _ = ndi.label(foreground)
    peaks = peak_local_max(
        distance, min_distance=params.min_distance, labels=components, exclude_border=False
    )
    markers = np.zeros(grey.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-distance, markers, mask=foreground)
    # peak_local_max does not promise a seed in every component (it skips some plateaus):
    # a component without one becomes an object of its own rather than vanishing.
    unseeded, _ = ndi.label(foreground & (labels == 0))
    labels = np.where(unseeded > 0, unseeded + labels.max(), labels)
    areas = np.bincount(labels.ravel())
    labels[(areas < params.min_area)[labels]] = 0
    return relabel_sequential(labels)[0].astype(np.int32)


def segment_classical(
    image: np.ndarray, params: BaselineParams | None = None
) -> list[dict[str, Any]]:
    """The baseline's objects as mask records, one per label of :func:`classical_labels`.

    Each record's ``point_coords`` is the object's most interior pixel (XY, the maximum of
    its own distance transform), its crop the whole image; ``predicted_iou`` and
    ``stability_score`` are 1.0 (the baseline has no scores).
    """
    labels = classical_labels(image, params)
    h, w = labels.shape
    records = []
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        mask = np.zeros((h, w), bool)
        mask[sl] = labels[sl] == i
        inner = ndi.distance_transform_edt(np.pad(mask[sl], 1))[1:-1, 1:-1]
        r, c = np.unravel_index(int(np.argmax(inner)), inner.shape)
        records.append(
            mask_record(
                mask,
                area=int(mask.sum()),
                box=mask_box(mask),
                predicted_iou=1.0,
                point_coords=[[float(c + sl[1].start), float(r + sl[0].start)]],
                stability_score=1.0,
                crop_box=[0, 0, w, h],
            )
        )
    return records
