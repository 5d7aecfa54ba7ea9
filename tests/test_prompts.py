"""Prompt prediction equals SamPredictor.predict bit for bit; bad prompts are refused."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.utils.amg import calculate_stability_score

from samlib.errors import PromptError, TooManyPromptsError
from samlib.models.arch import VIT_TINY, build_sam
from samlib.models.embeddings import Embedding, compute_embedding
from samlib.prompts import prompting
from samlib.prompts.objects import PromptSet
from samlib.prompts.prompting import (
    MAX_BOXES,
    MAX_MASK_BYTES,
    MAX_POINT_PROMPTS,
    clip_masks_to_box,
    predict,
    upscale_logits,
)
from samlib.tiling.prompts import TiledEmbeddings, predict_candidates_tiled
from tests.conftest import make_disks

H, W = 90, 130


@pytest.fixture(scope="module")
def scene(tiny_sam):
    gray, _ = make_disks((H, W))
    rgb = np.repeat(gray[..., None], 3, axis=2)
    pred = SamPredictor(tiny_sam)
    pred.set_image(rgb)
    return tiny_sam, compute_embedding(tiny_sam, rgb), pred


PROMPTS = {
    "point": dict(points=[[40.0, 30.0]], labels=[1]),
    "points": dict(points=[[40.0, 30.0], [90.5, 60.2], [5.0, 80.0]], labels=[1, 1, 0]),
    "box": dict(boxes=[20.0, 15.0, 62.0, 48.0]),
    "box+points": dict(boxes=[70.0, 40.0, 110.0, 80.0], points=[[90.0, 60.0]], labels=[0]),
    "edge point": dict(points=[[W, H]], labels=[1]),
}


def _stock(pred, prompt, multimask, mask_input=None):
    pts = prompt.get("points")
    return pred.predict(
        point_coords=None if pts is None else np.array(pts),
        point_labels=None if pts is None else np.array(prompt["labels"]),
        box=None if "boxes" not in prompt else np.array(prompt["boxes"]),
        mask_input=mask_input,
        multimask_output=multimask,
    )


def _assert_same_up_to_rounding(res, pred, prompt, multimask, masks, scores, low, mask_input=None):
    """Fast-decoder results: logits within rounding; a mask pixel may differ only where the
    stock logit is a rounding error away from the threshold."""
    scale = max(1.0, float(np.abs(low).max()))
    np.testing.assert_allclose(res.low_res_logits[0], low, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(res.scores[0], scores, rtol=0, atol=1e-5)
    differ = res.masks[0] != masks
    if differ.any():
        pts = prompt.get("points")
        logits, _, _ = pred.predict(
            point_coords=None if pts is None else np.array(pts),
            point_labels=None if pts is None else np.array(prompt["labels"]),
            box=None if "boxes" not in prompt else np.array(prompt["boxes"]),
            mask_input=mask_input,
            multimask_output=multimask,
            return_logits=True,
        )
        assert np.abs(logits[differ]).max() < 1e-4 * scale
        assert differ.sum() <= 2


@pytest.mark.parametrize("name", ["points", "box+points"])
def test_stability_on_full_resolution_logits_as_the_generator(scene, name):
    # SamAutomaticMaskGenerator scores stability on the upscaled logits; prompted masks too
    model, emb, pred = scene
    prompt = PROMPTS[name]
    pts = prompt.get("points")
    logits, _, _ = pred.predict(
        point_coords=np.array(pts),
        point_labels=np.array(prompt["labels"]),
        box=None if "boxes" not in prompt else np.array(prompt["boxes"]),
        return_logits=True,
    )
    want = calculate_stability_score(torch.as_tensor(logits), model.mask_threshold, 2.0).numpy()
    res = predict(model, emb, exact=True, stability_offset=2.0, **prompt)
    assert res.stability.shape == (1, 3)
    np.testing.assert_array_equal(res.stability[0], want)
    assert predict(model, emb, exact=True, **prompt).stability is None


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "fast"])
@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_equals_sam_predictor(scene, name, multimask, exact):
    model, emb, pred = scene
    masks, scores, low = _stock(pred, PROMPTS[name], multimask)
    res = predict(model, emb, multimask=multimask, exact=exact, **PROMPTS[name])
    n = 3 if multimask else 1
    assert res.masks.shape == (1, n, H, W) and res.masks.dtype == bool
    assert res.masks.flags.c_contiguous
    assert res.scores.shape == (1, n) and res.low_res_logits.shape == (1, n, 64, 64)
    if exact:
        assert np.array_equal(res.low_res_logits[0], low)
        assert np.array_equal(res.scores[0], scores)
        assert np.array_equal(res.masks[0], masks)
    else:
        _assert_same_up_to_rounding(res, pred, PROMPTS[name], multimask, masks, scores, low)


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "fast"])
@pytest.mark.parametrize("multimask", [True, False])
def test_mask_input_equals_sam_predictor(scene, multimask, exact):
    model, emb, pred = scene
    prompt = PROMPTS["points"]
    first = predict(model, emb, exact=True, **prompt)
    prev = first.low_res_logits[0, first.best_index[0]]
    masks, scores, low = _stock(pred, prompt, multimask, mask_input=prev[None])
    res = predict(model, emb, mask_input=prev, multimask=multimask, exact=exact, **prompt)
    if exact:
        assert np.array_equal(res.low_res_logits[0], low)
        assert np.array_equal(res.masks[0], masks) and np.array_equal(res.scores[0], scores)
    else:
        _assert_same_up_to_rounding(
            res, pred, prompt, multimask, masks, scores, low, mask_input=prev[None]
        )


@pytest.fixture(scope="module")
def sam_decoder():
    """SAM's full-size prompt encoder and decoder (256 channels, 64 x 64 embedding) with
    random weights, and a random embedding: the decoder is what the fast path changes."""
    cfg = dataclasses.replace(VIT_TINY, img_size=1024, window_size=8)
    cfg = dataclasses.replace(
        cfg, prompt_embed_dim=256, mask_in_chans=16, decoder_mlp_dim=2048,
        decoder_num_heads=8, iou_head_hidden_dim=256,
    )  # fmt: skip
    torch.manual_seed(7)
    model = build_sam(cfg)
    features = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(8))
    return model, features


@pytest.mark.parametrize("size", [(512, 512), (300, 700)])
def test_fast_decoder_at_sam_size(sam_decoder, size):
    model, features = sam_decoder
    pred = SamPredictor(model)
    scale = 1024 / max(size)
    pred.original_size = size
    pred.input_size = (int(size[0] * scale + 0.5), int(size[1] * scale + 0.5))
    pred.features, pred.is_image_set = features, True
    emb = Embedding(features, size, pred.input_size)
    h, w = size
    prompt = dict(points=[[w * 0.3, h * 0.6], [w * 0.5, h * 0.5]], labels=[1, 0])
    masks, scores, low = _stock(pred, prompt, True)
    exact = predict(model, emb, exact=True, **prompt)
    assert np.array_equal(exact.low_res_logits[0], low) and np.array_equal(exact.masks[0], masks)
    fast = predict(model, emb, **prompt)
    _assert_same_up_to_rounding(fast, pred, prompt, True, masks, scores, low)


def test_several_boxes_equal_one_at_a_time(scene):
    model, emb, pred = scene
    boxes = [[20.0, 15.0, 62.0, 48.0], [70.0, 40.0, 110.0, 80.0], [0.0, 0.0, W, H]]
    res = predict(model, emb, boxes=boxes, points=[[40.0, 30.0]], labels=[1], exact=True)
    assert res.masks.shape == (3, 3, H, W)
    for i, box in enumerate(boxes):
        masks, scores, _ = _stock(pred, dict(boxes=box, points=[[40.0, 30.0]], labels=[1]), True)
        assert np.array_equal(res.masks[i], masks) and np.array_equal(res.scores[i], scores)


def test_clip_masks_to_box_keeps_the_box_ends_included_widened_to_foreground_points():
    masks = np.ones((2, 20, 30), bool)
    out = clip_masks_to_box(masks, [2.3, 3.7, 5.2, 8.0])
    expect = np.zeros((20, 30), bool)
    expect[3:9, 2:7] = True  # rows 3..8 and columns 2..6: the box rounded outwards
    assert np.array_equal(out[0], expect) and np.array_equal(out[1], expect)
    wider = clip_masks_to_box(masks, [2, 3, 5, 8], points=[[12, 1], [25, 18]], labels=[1, 0])
    expect = np.zeros((20, 30), bool)
    expect[1:9, 2:13] = True  # the foreground point widens it, the background one does not
    assert np.array_equal(wider[0], expect)
    edge = clip_masks_to_box(masks[0], [0, 0, 30, 20])
    assert edge.all()  # a box up to the image's far edge keeps everything


def test_clip_to_box_drops_only_what_spills_outside_the_box(scene):
    model, emb, _ = scene
    box = [50.0, 30.0, 70.0, 50.0]
    raw = predict(model, emb, boxes=box)
    clipped = predict(model, emb, boxes=box, clip_to_box=True)
    outside = np.ones((H, W), bool)
    outside[30:51, 50:71] = False
    assert (raw.masks[0] & outside).any()  # random weights spill past the box
    assert not (clipped.masks[0] & outside).any()
    assert np.array_equal(clipped.masks[0], raw.masks[0] & ~outside)
    assert np.array_equal(clipped.scores, raw.scores)
    assert np.array_equal(clipped.low_res_logits, raw.low_res_logits)
    points = predict(model, emb, clip_to_box=True, **PROMPTS["points"])
    assert np.array_equal(points.masks, predict(model, emb, **PROMPTS["points"]).masks)


def test_all_candidates_and_best(scene):
    model, emb, _ = scene
    multi = predict(model, emb, **PROMPTS["point"])
    single = predict(model, emb, multimask=False, **PROMPTS["point"])
    both = predict(model, emb, all_candidates=True, **PROMPTS["point"])
    assert both.masks.shape[1] == 4
    assert np.array_equal(both.scores[0, 1:], multi.scores[0])
    assert np.array_equal(both.scores[0, :1], single.scores[0])
    best = multi.best_masks[0]
    assert np.array_equal(best, multi.masks[0, int(np.argmax(multi.scores[0]))])


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "fast"])
def test_cache_follows_in_place_weight_changes(tiny_sam, exact):
    model = copy.deepcopy(tiny_sam)
    rgb = np.random.default_rng(1).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    emb = compute_embedding(model, rgb)
    prompt = dict(points=[[20.0, 10.0]], labels=[1])
    before = predict(model, emb, exact=exact, **prompt)
    with torch.no_grad():  # e.g. an optimizer step on the decoder and prompt encoder
        for p in [*model.mask_decoder.parameters(), *model.prompt_encoder.parameters()]:
            p.mul_(1.01)
        model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(1.01)
    after = predict(model, emb, exact=True, **prompt)
    pred = SamPredictor(model)
    pred.features, pred.is_image_set = emb.features, True
    pred.original_size, pred.input_size = emb.original_size, emb.input_size
    _, scores, low = _stock(pred, prompt, True)
    assert not np.array_equal(before.low_res_logits, after.low_res_logits)
    assert np.array_equal(after.low_res_logits[0], low) and np.array_equal(after.scores[0], scores)
    if not exact:
        fast = predict(model, emb, **prompt)
        scale = max(1.0, float(np.abs(low).max()))
        np.testing.assert_allclose(fast.low_res_logits[0], low, rtol=0, atol=1e-5 * scale)


def test_embedding_is_not_mutated(scene):
    model, emb, _ = scene
    before = emb.features.clone()
    predict(model, emb, **PROMPTS["box"])
    assert torch.equal(before, emb.features)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(), "at least one"),
        (dict(points=[[10, 10]]), "labels"),
        (dict(labels=[1]), "without points"),
        (dict(points=[[10, 10, 3]], labels=[1]), "shape"),
        (dict(points=[[10, 10]], labels=[2]), "0 .background. or 1"),
        (dict(points=[[10, 10], [5, 5]], labels=[1]), r"shape \(2,\)"),
        (dict(points=[[W + 1, 10]], labels=[1]), "outside"),
        (dict(points=[[-0.5, 10]], labels=[1]), "outside"),
        (dict(points=[[np.nan, 10]], labels=[1]), "NaN"),
        (dict(points=[["a", 1]], labels=[1]), "numbers"),
        (dict(boxes=[10, 10, 5, 20]), "x0 <= x1"),
        (dict(boxes=[10, 10, 20]), "shape"),
        (dict(boxes=[10, 10, 20, H + 5]), "outside"),
        (dict(mask_input=np.zeros((32, 32))), "mask_input"),
    ],
)
def test_bad_prompts_refused(scene, kwargs, match):
    model, emb, _ = scene
    with pytest.raises(PromptError, match=match):
        predict(model, emb, **kwargs)


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize(
    "size", [(256, 256), (100, 256), (256, 7), (31, 45), (700, 300), (1024, 1360), (999, 2000)]
)
def test_cropped_upsampling_is_bit_identical(tiny_sam, size, channels):
    s = 256 / max(size)
    input_size = (int(size[0] * s + 0.5), int(size[1] * s + 0.5))
    low = torch.randn(1, channels, 64, 64, generator=torch.Generator().manual_seed(0))
    ref = tiny_sam.postprocess_masks(low, input_size, size)
    assert torch.equal(upscale_logits(tiny_sam, low, input_size, size), ref)


def _boxes(n: int, size: tuple[int, int] = (H, W)) -> np.ndarray:
    """``n`` small XYXY boxes inside an image of ``size`` (H, W)."""
    xy = np.random.default_rng(n).uniform(0, min(size) - 12, (n, 2))
    return np.hstack([xy, xy + 10])


def _points(n: int) -> dict:
    xy = np.random.default_rng(n).uniform(0, min(H, W), (n, 2))
    return dict(points=xy, labels=np.ones(n, int))


def _no_decoder(monkeypatch) -> None:
    def decoded(*args, **kwargs):
        raise AssertionError("the decoder ran for a call that had to be refused")

    monkeypatch.setattr(prompting, "decode_fast", decoded)
    monkeypatch.setattr(prompting, "decode", decoded)


def test_as_many_boxes_and_points_as_the_limits_allow_are_predicted(scene):
    model, emb, _ = scene
    res = predict(model, emb, boxes=_boxes(MAX_BOXES), multimask=False)
    assert res.masks.shape == (MAX_BOXES, 1, H, W)
    res = predict(model, emb, **_points(MAX_POINT_PROMPTS // 2), boxes=_boxes(2), multimask=False)
    assert res.masks.shape == (2, 1, H, W)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(boxes=_boxes(MAX_BOXES + 1)), f"{MAX_BOXES + 1} boxes in one call, more than 64"),
        (dict(boxes=_boxes(2000)), "2,000 boxes in one call"),
        (_points(MAX_POINT_PROMPTS + 1), "1,001 points = 1,001 point prompts in one call"),
        (
            dict(**_points(MAX_POINT_PROMPTS // 2 + 1), boxes=_boxes(2)),
            "501 points x 2 boxes = 1,002 point prompts",
        ),
    ],
)
def test_too_many_prompts_in_one_call_are_refused_before_decoding(
    scene, monkeypatch, kwargs, match
):
    model, emb, _ = scene
    _no_decoder(monkeypatch)
    with pytest.raises(TooManyPromptsError, match=match):
        predict(model, emb, **kwargs)


def test_masks_too_large_for_one_call_are_refused_before_decoding(scene, monkeypatch):
    model, emb, _ = scene
    _no_decoder(monkeypatch)
    side = 8192  # 3 masks of 8192 x 8192 px: 192 MiB of booleans per box
    big = dataclasses.replace(emb, original_size=(side, side))
    n = MAX_MASK_BYTES // (3 * side * side) + 1
    with pytest.raises(TooManyPromptsError, match=rf"{n} prompt set\(s\) x 3 masks of 8,192"):
        predict(model, big, boxes=_boxes(n, (side, side)))


def test_tiled_prompts_count_the_masks_of_the_whole_image(scene, monkeypatch):
    model, _, _ = scene
    _no_decoder(monkeypatch)
    rgb = np.zeros((4096, 4096, 3), np.uint8)  # masks come back in the image frame
    tiled = TiledEmbeddings.build(model, rgb, tile_size=512, halo=64)
    n = MAX_MASK_BYTES // (3 * 4096 * 4096) + 1
    boxes = np.tile([[10.0, 10.0, 40.0, 40.0]], (n, 1))
    prompts = PromptSet(np.zeros((0, 2)), np.zeros(0, int), boxes)
    with pytest.raises(TooManyPromptsError, match="masks of 4,096 x 4,096 px"):
        predict_candidates_tiled(model, tiled, prompts)
    assert tiled.embeddings == {}  # refused before any tile was encoded
