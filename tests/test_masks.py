"""Mask helpers: RLE round trip, records of either kind, label images and back."""

from __future__ import annotations

import numpy as np
import pytest

from samlib.errors import ParameterError
from samlib.records.masks import (
    labels_from_masks,
    masks_from_labels,
    masks_of,
    record_mask,
    record_shape,
)
from samlib.records.rle import decode_coco, encode_coco


def test_rle_round_trip_and_json_safe_counts():
    rng = np.random.default_rng(0)
    m = rng.random((23, 31)) > 0.6
    rle = encode_coco(m)
    assert rle["size"] == [23, 31] and isinstance(rle["counts"], str)
    np.testing.assert_array_equal(decode_coco(rle), m)
    as_bytes = {"size": rle["size"], "counts": rle["counts"].encode()}
    np.testing.assert_array_equal(decode_coco(as_bytes), m)


def test_records_bool_and_rle_agree():
    m = np.zeros((8, 9), bool)
    m[2:5, 3:7] = True
    a, b = {"segmentation": m}, {"segmentation": encode_coco(m)}
    np.testing.assert_array_equal(record_mask(a), record_mask(b))
    assert record_shape(a) == record_shape(b) == (8, 9)
    assert len(masks_of([a, b])) == 2 and len(masks_of(np.stack([m, m, m]))) == 3


def test_bad_masks_refused():
    with pytest.raises(ParameterError, match="different shapes"):
        masks_of([np.zeros((4, 4), bool), np.zeros((5, 4), bool)])
    with pytest.raises(ParameterError):
        record_mask({"area": 3})
    with pytest.raises(ParameterError, match="sum"):
        decode_coco({"size": [2, 2], "counts": [1, 1]})
    with pytest.raises(ParameterError):
        decode_coco({"counts": "abc"})


def test_labels_and_back():
    labels = np.zeros((10, 10), np.uint16)
    labels[1:3, 1:3] = 4
    labels[5:9, 5:9] = 9
    ids, ms = masks_from_labels(labels)
    assert ids.tolist() == [4, 9]
    rebuilt = labels_from_masks(ms)
    np.testing.assert_array_equal(rebuilt > 0, labels > 0)
    assert rebuilt[2, 2] == 1 and rebuilt[6, 6] == 2
