"""The classical baseline (threshold + distance transform + watershed) on images of known answer."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk
from skimage.filters import threshold_otsu

from samlib.errors import ParameterError
from samlib.evaluation import (
    BASELINE_HELP,
    BaselineParams,
    classical_labels,
    evaluate,
    foreground_threshold,
    grey_of,
    mask_iou,
    match,
    segment_classical,
)
from samlib.outputs.export import export_makers
from samlib.outputs.measure import measure_records
from samlib.records import RECORD_KEYS, labels_from_records
from tests.conftest import make_disks

SEPARATE = ((20, 25, 9), (25, 90, 12), (70, 30, 14), (72, 95, 10))


def _as(img: np.ndarray, kind: str) -> np.ndarray:
    """The uint8 grey disks image as grey, HWC RGB, (H, W, 1), or 16-bit grey."""
    if kind == "rgb":
        return np.stack([img] * 3, axis=-1)
    if kind == "single":
        return img[..., None]
    if kind == "uint16":
        return img.astype(np.uint16) * 257
    return img


@pytest.mark.parametrize("kind", ["grey", "rgb", "single", "uint16"])
def test_separated_disks_are_found_one_each(kind):
    img, truth = make_disks(shape=(100, 128), disks=SEPARATE, value=200)
    img = np.maximum(img, 30).astype(np.uint8)  # a grey background, not black
    records = segment_classical(_as(img, kind), BaselineParams(min_distance=5, min_area=10))
    assert len(records) == len(SEPARATE)
    truth_masks = [truth == i for i in range(1, len(SEPARATE) + 1)]
    iou = mask_iou(truth_masks, [r["segmentation"] for r in records])
    gi, pi = match(iou, 0.9)
    assert len(gi) == len(SEPARATE)
    assert iou[gi, pi].min() > 0.9


def _touching(separation: int, radius: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping disks ``separation`` px apart on one row, and their true split."""
    shape = (60, 90)
    img = np.zeros(shape, np.uint8)
    centres = [(30, 45 - separation // 2), (30, 45 + (separation - separation // 2))]
    for r, c in centres:
        img[disk((r, c), radius, shape=shape)] = 220
    cols = np.arange(shape[1])[None, :].repeat(shape[0], axis=0)
    truth = np.where(img > 0, np.where(cols < 45, 1, 2), 0)
    return img, truth


def test_touching_disks_are_split_by_the_watershed():
    img, truth = _touching(separation=20)
    labels = classical_labels(img, BaselineParams(min_distance=5, min_area=10))
    assert labels.max() == 2
    ev = evaluate(labels, truth)
    assert ev["tp"] == 2 and ev.mean_matched_iou > 0.9


def test_seeds_closer_than_min_distance_merge_touching_disks():
    img, _ = _touching(separation=20)
    labels = classical_labels(img, BaselineParams(min_distance=25, min_area=10))
    assert labels.max() == 1
    assert np.array_equal(labels > 0, img > 0)


def test_a_number_threshold_keeps_only_brighter_objects_otsu_keeps_both():
    img, truth = make_disks(shape=(80, 100), disks=((25, 30, 10), (50, 70, 12)), value=1)
    img = np.choose(truth, [20, 110, 230]).astype(np.uint8)  # background, dim, bright
    both = classical_labels(img, BaselineParams())
    assert both.max() == 2
    bright = classical_labels(img, BaselineParams(threshold=150))
    assert bright.max() == 1
    assert np.array_equal(bright > 0, truth == 2)
    grey = grey_of(img)
    assert foreground_threshold(grey, BaselineParams()) == threshold_otsu(grey)
    assert foreground_threshold(grey, BaselineParams(threshold=150)) == 150.0


def test_min_area_drops_small_objects():
    img, _ = make_disks(shape=(80, 100), disks=((25, 30, 3), (50, 70, 12)), value=200)
    params = BaselineParams(min_distance=5, min_area=0)
    assert classical_labels(img, params).max() == 2
    assert classical_labels(img, BaselineParams(min_distance=5, min_area=40)).max() == 1


def test_a_flat_image_has_no_objects():
    flat = np.full((40, 50), 90, np.uint8)
    assert segment_classical(flat) == []
    assert segment_classical(flat, BaselineParams(threshold=100)) == []


def test_records_work_with_every_export_measurement_and_evaluation():
    img, truth = make_disks(shape=(100, 128), disks=SEPARATE, value=200)
    records = segment_classical(img, BaselineParams(min_distance=5))
    assert all(tuple(r) == RECORD_KEYS for r in records)
    labels = classical_labels(img, BaselineParams(min_distance=5))
    assert np.array_equal(labels_from_records(records, shape=img.shape), labels)
    for r in records:  # the record's point lies inside its own mask
        x, y = r["point_coords"][0]
        assert r["segmentation"][int(y), int(x)]
    table = measure_records(records, img)
    assert table["area"].tolist() == [r["area"] for r in records]
    files = {fmt: make() for fmt, make in export_makers(records, img.shape).items()}
    assert all(len(content) > 0 for content in files.values())
    assert evaluate(records, truth)["f1"] == 1.0


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"threshold": "mean"}, "threshold"),
        ({"threshold": -1}, "threshold"),
        ({"threshold": 255.5}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"threshold": True}, "threshold"),
        ({"min_distance": 0}, "min_distance"),
        ({"min_distance": 2.5}, "min_distance"),
        ({"min_area": -1}, "min_area"),
        ({"min_area": "20"}, "min_area"),
    ],
)
def test_bad_parameters_are_refused_in_one_line(change, named):
    with pytest.raises(ParameterError) as caught:
        BaselineParams(**change)
    message = str(caught.value)
    assert named in message and "\n" not in message


def test_every_parameter_has_one_line_of_help():
    fields = set(BaselineParams.__dataclass_fields__)
    assert set(BASELINE_HELP) == fields
    assert all(text and "\n" not in text for text in BASELINE_HELP.values())
