"""Fast (approximate) segment-everything returns sane records close to the exact ones."""

from __future__ import annotations

import numpy as np
import pytest

from samlib.everything import RECORD_KEYS, segment_everything
from samlib.fastmode import coarse_to_fine
from tests.test_everything import colored_disks


def test_coarse_to_fine_is_a_permutation_coarse_first():
    order = coarse_to_fine(16, 2)
    assert sorted(order) == list(range(16))
    assert list(order[:4]) == [0, 2, 8, 10]
    assert list(coarse_to_fine(10, 2)) == list(range(10))  # not square: stock order


@pytest.mark.slow
@pytest.mark.parametrize("skip", [False, True])
def test_fast_mode_records_are_sane(sharp_sam, skip):  # noqa: F811
    from samlib.fastmode import fast_candidates
    from samlib.genparams import GeneratorParams
    from samlib.refilter import refilter

    img = colored_disks()
    params = dict(
        points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.1, box_nms_thresh=0.9
    )
    exact = segment_everything(sharp_sam, img, **params)
    cands = fast_candidates(
        sharp_sam, img, GeneratorParams(**params), skip_covered=skip, max_cover_fraction=1.0
    )
    fast = refilter(cands)
    assert fast and all(tuple(r) == RECORD_KEYS for r in fast)
    for r in fast:
        seg = r["segmentation"]
        assert seg.shape == img.shape[:2] and seg.dtype == bool
        assert r["area"] == int(seg.sum()) > 0
        x, y, bw, bh = r["bbox"]
        rows, cols = np.nonzero(seg)
        assert (x, y, x + bw, y + bh) == (cols.min(), rows.min(), cols.max(), rows.max())
    if not skip:
        # only rounding differs from the exact decoder: the same masks come out
        assert len(fast) == len(exact)
        same = sum(
            np.array_equal(a["segmentation"], b["segmentation"])
            for a, b in zip(fast, exact, strict=True)
        )
        assert same >= 0.9 * len(exact)
    else:
        assert cands.stats["skipped"] > 0
        assert len(fast) <= len(exact) + 2


def test_fast_flag_in_public_api(sharp_sam):  # noqa: F811
    recs = segment_everything(
        sharp_sam,
        colored_disks(),
        fast=True,
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.1,
    )
    assert recs and all(tuple(r) == RECORD_KEYS for r in recs)
