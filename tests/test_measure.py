"""Measurement table: known disks, original intensities per channel, µm², records/RLE."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from samlib.errors import ParameterError
from samlib.image.microscopy import as_image
from samlib.outputs.measure import measure_labels, measure_masks, measure_records
from samlib.records.rle import encode_coco

SHAPE = (80, 100)
DISKS = [(20, 30, 8), (50, 70, 12)]  # row, col, radius


def _masks():
    out = []
    for r, c, rad in DISKS:
        m = np.zeros(SHAPE, bool)
        m[disk((r, c), rad, shape=SHAPE)] = True
        out.append(m)
    return out


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32])
def test_disks_shape_and_intensity(dtype):
    masks = _masks()
    data = np.zeros((*SHAPE, 2), dtype=dtype)
    data[masks[0], 0] = 100
    data[masks[1], 0] = 50
    data[..., 1] = 7
    data[masks[1], 1] = 9
    data[masks[1].nonzero()[0][0], masks[1].nonzero()[1][0], 1] = 20  # one bright pixel
    if dtype == np.float32:
        data[masks[0].nonzero()[0][0], masks[0].nonzero()[1][0], 0] = np.nan  # ignored
    table = measure_masks(masks, as_image(data, "YXC"), pixel_size_um=0.5)
    assert table["id"].tolist() == [1, 2]
    assert table["area"].tolist() == [int(m.sum()) for m in masks]
    for i, (r, c, rad) in enumerate(DISKS):
        row = table.iloc[i]
        # pixel centres at +0.5 (ImageJ convention)
        assert row["centroid_x"] == pytest.approx(c + 0.5)
        assert row["centroid_y"] == pytest.approx(r + 0.5)
        assert (row["bbox_x"], row["bbox_y"]) == (c - rad + 1, r - rad + 1)
        assert row["bbox_w"] == row["bbox_h"] == 2 * rad - 1
        assert row["eccentricity"] < 0.1
        assert row["solidity"] > 0.9
        assert row["perimeter"] == pytest.approx(2 * np.pi * rad, rel=0.15)
        assert row["area_um2"] == pytest.approx(row["area"] * 0.25)
        assert row["perimeter_um"] == pytest.approx(row["perimeter"] * 0.5)
    assert table["mean_intensity_c0"].tolist() == pytest.approx([100, 50])
    assert table["min_intensity_c1"].tolist() == [7, 9]
    assert table["max_intensity_c1"].tolist() == [7, 20]
    assert table["mean_intensity_c1"][1] == pytest.approx(9 + 11 / masks[1].sum())


def test_records_with_rle_and_scores():
    masks = _masks()
    records = [
        {
            "segmentation": encode_coco(m),
            "area": int(m.sum()),
            "predicted_iou": s,
            "stability_score": s / 2,
        }
        for m, s in zip(masks, (0.9, 0.8), strict=True)
    ]
    table = measure_records(records)
    assert table["predicted_iou"].tolist() == pytest.approx([0.9, 0.8])
    assert table["stability_score"].tolist() == pytest.approx([0.45, 0.4])
    assert table["area"].tolist() == [int(m.sum()) for m in masks]
    assert not any(c.startswith("mean_intensity") for c in table.columns)


def test_overlapping_masks_each_measured_whole():
    a, b = _masks()
    b2 = np.roll(a, 5, axis=1)  # overlaps a
    table = measure_masks([a, b2])
    assert table["area"].tolist() == [a.sum(), b2.sum()]


def test_labels_ids_and_max_projection():
    labels = np.zeros(SHAPE, np.uint16)
    for lab, m in zip((3, 17), _masks(), strict=True):
        labels[m] = lab
    stack = np.zeros((3, *SHAPE), np.uint16)
    stack[1][labels == 3] = 40
    stack[2][labels == 17] = 60
    img = as_image(stack, "ZYX")
    table = measure_labels(labels, img, plane="max")
    assert table["id"].tolist() == [3, 17]
    assert table["mean_intensity_c0"].tolist() == [40, 60]
    assert measure_labels(labels, img, plane=0)["max_intensity_c0"].tolist() == [0, 0]
    assert len(measure_labels(np.zeros(SHAPE, np.uint16))) == 0


def test_shape_mismatch_refused():
    with pytest.raises(ParameterError, match="80x100"):
        measure_masks(_masks(), np.zeros((10, 10), np.uint8))
