"""Fast (approximate) segment-everything returns sane records close to the exact ones."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from skimage.transform import resize

from samlib.decoding.fast_decoder import decode_fast
from samlib.everything.fastmode import fast_candidates, upsample_once
from samlib.everything.generate import segment_everything
from samlib.everything.params import GeneratorParams
from samlib.everything.refilter import refilter
from samlib.models.arch import VIT_TINY, build_sam
from samlib.models.embeddings import compute_embedding
from samlib.records.build import RECORD_KEYS
from tests.test_everything import colored_disks


@pytest.mark.slow
def test_fast_mode_records_are_sane(sharp_sam):  # noqa: F811

    img = colored_disks()
    params = dict(
        points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.1, box_nms_thresh=0.9
    )
    exact = segment_everything(sharp_sam, img, **params)
    cands = fast_candidates(sharp_sam, img, GeneratorParams(**params))
    fast = refilter(cands)
    assert fast and all(tuple(r) == RECORD_KEYS for r in fast)
    for r in fast:
        seg = r["segmentation"]
        assert seg.shape == img.shape[:2] and seg.dtype == bool
        assert r["area"] == int(seg.sum()) > 0
        x, y, bw, bh = r["bbox"]
        rows, cols = np.nonzero(seg)
        assert (x, y, x + bw, y + bh) == (cols.min(), rows.min(), cols.max(), rows.max())
    # rounding and the one-step upsampling differ from the exact generator: the
    # same masks come out, each within a few boundary pixels
    assert len(fast) == len(exact)
    for a, b in zip(fast, exact, strict=True):
        inter = np.logical_and(a["segmentation"], b["segmentation"]).sum()
        union = np.logical_or(a["segmentation"], b["segmentation"]).sum()
        assert inter / union >= 0.9


def test_fast_flag_in_public_api(sharp_sam):  # noqa: F811
    params = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.1)
    recs = segment_everything(sharp_sam, colored_disks(), fast=True, **params)
    assert recs and all(tuple(r) == RECORD_KEYS for r in recs)
    # one record per exact record, in the same order
    exact = segment_everything(sharp_sam, colored_disks(), **params)
    assert [r["point_coords"] for r in recs] == [r["point_coords"] for r in exact]


@pytest.mark.parametrize("size", [(512, 512), (300, 700)])
def test_one_step_upsampling_is_close_to_stock(size):
    model = build_sam(dataclasses.replace(VIT_TINY, img_size=1024, window_size=8))
    scale = 1024 / max(size)
    input_size = (int(size[0] * scale + 0.5), int(size[1] * scale + 0.5))
    side = 4 * model.prompt_encoder.image_embedding_size[0]
    rng = np.random.default_rng(0)
    # smooth logits, as a decoder gives: blobs of +-10 over the low-res grid
    low = resize(rng.normal(0, 10, (3, 8, 8)), (3, side, side), order=3).astype(np.float32)
    low = torch.as_tensor(low)
    with torch.no_grad():
        ref = model.postprocess_masks(low[None], input_size, size)[0]
    ours = upsample_once(model, low, input_size, size)
    assert ours.shape == ref.shape == (3, *size)
    inter = ((ours > 0) & (ref > 0)).flatten(1).sum(1)
    union = ((ours > 0) | (ref > 0)).flatten(1).sum(1)
    assert bool((inter / union >= 0.97).all())
    # a wrong frame (e.g. forgetting the padding crop) would shift masks far more
    assert float((ours - ref).abs().mean()) < 0.05 * float(ref.abs().mean())


def test_batched_fast_decoder_equals_one_prompt_at_a_time(sharp_sam):
    emb = compute_embedding(sharp_sam, colored_disks())
    pts = torch.tensor([[[30.0, 40.0]], [[100.0, 20.0]], [[200.0, 150.0]], [[5.0, 250.0]]])
    labels = torch.ones((4, 1), dtype=torch.int)
    sparse, _ = sharp_sam.prompt_encoder(points=(pts, labels), boxes=None, masks=None)
    low, iou, sel = decode_fast(sharp_sam, emb.features, sparse, None, slice(1, None))
    assert low.shape[:2] == (4, 3) and iou.shape == (4, 3) and sel.tolist() == [0, 1, 2, 3]
    for b in range(4):
        one_low, one_iou, _ = decode_fast(sharp_sam, emb.features, sparse[b : b + 1], None)
        scale = float(one_low.abs().max())
        assert torch.allclose(low[b], one_low[0, 1:], rtol=0, atol=1e-5 * scale)
        assert torch.allclose(iou[b], one_iou[0, 1:], rtol=0, atol=1e-5)
    # only prompt sets with a mask above the floor are upscaled
    floor = float(iou.max(dim=1).values.median())
    low2, iou2, sel2 = decode_fast(sharp_sam, emb.features, sparse, None, slice(1, None), floor)
    expect = [b for b in range(4) if bool((iou[b] > floor).any())]
    assert sel2.tolist() == expect and 0 < len(expect) < 4
    assert torch.allclose(low2, low[expect], rtol=0, atol=1e-5 * float(low.abs().max()))
