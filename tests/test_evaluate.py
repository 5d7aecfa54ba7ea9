"""Instance matching and the DSB2018 metric on known overlaps and on the real DSB mask."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from skimage.draw import disk

from samlib.datasets.samples import DATA_DIR
from samlib.errors import ParameterError
from samlib.evaluation.metrics import DSB_THRESHOLDS, evaluate, label_iou, mask_iou, match

SHAPE = (100, 120)
DSB_MASK = DATA_DIR / "dsb2018_nuclei" / "mask.tif"


def _labels(disks, shape=SHAPE):
    out = np.zeros(shape, np.uint16)
    for i, (r, c, rad) in enumerate(disks, start=1):
        out[disk((r, c), rad, shape=shape)] = i
    return out


GT = [(25, 30, 10), (60, 80, 15), (80, 25, 8)]


def test_perfect_prediction_scores_one():
    gt = _labels(GT)
    pred = np.where(gt > 0, gt + 10, 0)  # different ids, same objects
    e = evaluate(pred, gt)
    assert e.average_precision == 1.0 and e["f1"] == 1.0 and e.mean_matched_iou == 1.0
    assert e.objects["pred_id"].tolist() == [11, 12, 13]
    assert e.per_threshold["threshold"].tolist() == list(DSB_THRESHOLDS)


def test_shifted_disk_iou_and_thresholds():
    gt = _labels([(50, 60, 20)])
    shift = 6
    pred = _labels([(50, 60 + shift, 20)])
    a, b = gt > 0, pred > 0
    expected = (a & b).sum() / (a | b).sum()
    # two circles of radius R at distance d: lens area / (2 pi R^2 - lens)
    R, d = 20, shift
    lens = 2 * R**2 * np.arccos(d / (2 * R)) - d / 2 * np.sqrt(4 * R**2 - d**2)
    assert expected == pytest.approx(lens / (2 * np.pi * R**2 - lens), abs=0.02)
    iou, g_ids, p_ids = label_iou(gt, pred)
    assert iou.shape == (1, 1) and iou[0, 0] == pytest.approx(expected)
    e = evaluate(pred, gt)
    hits = [t for t in DSB_THRESHOLDS if expected >= t]
    assert e.per_threshold["tp"].tolist() == [1 if t in hits else 0 for t in DSB_THRESHOLDS]
    assert e.average_precision == pytest.approx(len(hits) / len(DSB_THRESHOLDS))
    assert e.mean_matched_iou == pytest.approx(expected)


def test_missed_and_extra_objects():
    gt = _labels(GT)
    pred = _labels([GT[0], GT[1], (10, 110, 5)])  # misses the third, adds a false one
    s = evaluate(pred, gt).summary()
    assert (s["tp"], s["fp"], s["fn"]) == (2, 1, 1)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    assert s["ap"] == pytest.approx(2 / 4)
    objects = evaluate(pred, gt).objects
    assert objects["matched"].tolist() == [True, True, False, False]
    assert objects["gt_id"].tolist() == [1, 2, 3, 0]


def test_label_iou_matches_brute_force():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 6, size=(30, 40))
    pred = rng.integers(0, 4, size=(30, 40)) * 3
    iou, g_ids, p_ids = label_iou(gt, pred)
    for i, g in enumerate(g_ids):
        for j, p in enumerate(p_ids):
            a, b = gt == g, pred == p
            assert iou[i, j] == pytest.approx((a & b).sum() / (a | b).sum())


def test_lists_of_overlapping_masks():
    gt = [_labels([d]) > 0 for d in GT]
    overlapping = [_labels([(25, 30, 10)]) > 0, _labels([(25, 31, 10)]) > 0]  # two on one object
    e = evaluate(overlapping, gt)
    assert (e["tp"], e["fp"], e["fn"]) == (1, 1, 2)  # one-to-one: the duplicate is a FP
    np.testing.assert_allclose(mask_iou(gt, gt), np.eye(3))
    assert evaluate(np.stack(gt), gt).average_precision == 1.0


def test_match_prefers_total_iou():
    iou = np.array([[0.9, 0.6], [0.8, 0.0]])
    gi, pi = match(iou, 0.5)  # greedy would pair (0,0) and leave gt 1 unmatched
    assert sorted(zip(gi.tolist(), pi.tolist(), strict=True)) == [(0, 1), (1, 0)]


def test_empty_cases():
    empty = np.zeros(SHAPE, np.uint16)
    assert evaluate(empty, empty)["ap"] == 1.0
    s = evaluate(empty, _labels(GT)).summary()
    assert (s["tp"], s["fn"], s["recall"], s["ap"]) == (0, 3, 0.0, 0.0)
    s = evaluate(_labels(GT), empty).summary()
    assert (s["fp"], s["precision"]) == (3, 0.0)
    with pytest.raises(ParameterError):
        evaluate(empty, empty, thresholds=[0.0])
    with pytest.raises(ParameterError, match="shape"):
        evaluate(empty, np.zeros((5, 5), np.uint16))


def test_dsb_mask_against_itself_and_eroded():
    gt = tifffile.imread(DSB_MASK)
    e = evaluate(gt, gt)
    assert e.n_gt == 125 and e.average_precision == 1.0 and e.mean_matched_iou == 1.0
    shifted = np.roll(gt, 2, axis=0)
    e2 = evaluate(shifted, gt)
    assert 0 < e2.average_precision < 1 and 0.5 < e2.mean_matched_iou < 1
    d = json.loads(json.dumps(e2.to_dict(), allow_nan=False))
    assert len(d["per_threshold"]) == 10 and d["n_pred"] == 125
    assert evaluate(np.zeros_like(gt), gt).to_dict()["mean_matched_iou"] is None


def test_mixed_inputs_and_float_labels():
    gt = _labels(GT)
    masks = [gt == i for i in (3, 1)]  # a list, in another order
    e = evaluate(masks, gt)  # gt object 2 has no prediction
    assert e.average_precision == pytest.approx(2 / 3) and (e.n_gt, e.n_pred) == (3, 2)
    pairs = dict(zip(e.objects["gt_id"], e.objects["pred_id"], strict=True))
    assert pairs == {1: 2, 2: 0, 3: 1}  # label ids kept for the label image, list order for masks
    assert evaluate(gt.astype(np.float32), gt).average_precision == 1.0
    with pytest.raises(ParameterError, match="whole numbers"):
        evaluate(gt + 0.5, gt)
