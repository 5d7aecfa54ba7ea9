"""Area filters (pixels and µm²), whole-image outliers, before/after counts."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from samlib.errors import ParameterError
from samlib.records.filters import (
    area_keep,
    area_range,
    filter_records,
    px_to_um2,
    um2_to_px,
    whole_image_outliers,
)
from samlib.records.rle import encode_coco

SHAPE = (100, 120)


def _record(mask: np.ndarray, rle: bool = False) -> dict:
    rows, cols = np.nonzero(mask)
    x0, y0 = int(cols.min()), int(rows.min())
    return {
        "segmentation": encode_coco(mask) if rle else mask,
        "area": int(mask.sum()),
        # SAM's convention: XYWH with w = max_col - min_col
        "bbox": [x0, y0, int(cols.max()) - x0, int(rows.max()) - y0],
        "predicted_iou": 0.9,
        "point_coords": [[float(x0), float(y0)]],
        "stability_score": 0.95,
        "crop_box": [0, 0, SHAPE[1], SHAPE[0]],
    }


def _disk(r, c, rad):
    m = np.zeros(SHAPE, bool)
    m[disk((r, c), rad, shape=SHAPE)] = True
    return m


@pytest.fixture(params=[False, True], ids=["bool", "rle"])
def records(request):
    background = np.ones(SHAPE, bool)
    small, medium, large = _disk(20, 20, 3), _disk(50, 60, 8), _disk(70, 30, 15)
    background &= ~(small | medium | large)  # SAM's "everything else" mask
    masks = [background, small, medium, large]
    return [_record(m, rle=request.param) for m in masks]


def test_whole_image_outlier_is_found(records):
    assert whole_image_outliers(records).tolist() == [0]
    assert whole_image_outliers(records, SHAPE).tolist() == [0]
    # a large object that does not span the image is not an outlier
    big = _record(_disk(50, 60, 30))
    assert whole_image_outliers([big]).size == 0
    assert whole_image_outliers([big], max_fraction=0.2).tolist() == [0]


def test_filter_counts_and_area_limits(records):
    areas = [r["area"] for r in records]
    report = filter_records(records, min_area=areas[1] + 1)
    assert report.counts() == {"candidates": 4, "records": 4, "after_outliers": 3, "after_area": 2}
    assert report.kept_indices.tolist() == [2, 3]
    assert [r["area"] for r in report.kept] == areas[2:]
    report = filter_records(records, min_area=areas[1], max_area=areas[2])
    assert report.kept_indices.tolist() == [1, 2]  # inclusive bounds
    report = filter_records(records, drop_whole_image=False)
    assert report.kept_indices.tolist() == [0, 1, 2, 3] and report.outliers.tolist() == [0]
    assert list(report.status()) == ["kept"] * 4
    dropped = filter_records(records, min_area=areas[1] + 1, n_candidates=9)
    assert list(dropped.status()) == ["whole image", "outside area range", "kept", "kept"]
    assert dropped.counts()["candidates"] == 9


def test_area_in_um2():
    areas = np.array([10, 100, 1000])
    # 0.5 µm/px: 1 px = 0.25 µm², so the areas are 2.5, 25 and 250 µm²
    assert area_keep(areas, 20, 300, pixel_size_um=0.5).tolist() == [False, True, True]
    assert area_keep(areas, 20, 300).tolist() == [False, True, False]
    assert um2_to_px(25.0, 0.5) == pytest.approx(100)
    assert px_to_um2(100, 0.5) == pytest.approx(25.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_area": 10, "max_area": 5},
        {"min_area": -1},
        {"max_area": float("nan")},
        {"min_area": 1, "pixel_size_um": 0},
        {"min_area": 1, "pixel_size_um": -0.3},
    ],
)
def test_bad_limits_refused(kwargs):
    with pytest.raises(ParameterError):
        area_keep(np.array([1, 2]), **kwargs)


def test_area_range_excludes_outliers(records):
    out = whole_image_outliers(records)
    assert area_range(records, out) == (records[1]["area"], records[3]["area"])
    assert area_range([], []) == (0, 0)
