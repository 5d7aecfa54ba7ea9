"""The everything-generator equals SamAutomaticMaskGenerator; refiltering needs no model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils.amg import generate_crop_boxes
from segment_anything.utils.amg import remove_small_regions as stock
from skimage.draw import disk

from samlib.decoding import decoder
from samlib.decoding.decoder import PointDecoder, upscale
from samlib.decoding.image_terms import image_terms
from samlib.errors import ImageError, ParameterError
from samlib.everything import candidates, crops
from samlib.everything.candidates import decode_candidates, upsample_like_stock
from samlib.everything.generate import (
    PARAM_HELP,
    GeneratorParams,
    generate_candidates,
    refilter,
    segment_everything,
)
from samlib.everything.params import MAX_POINTS_PER_BATCH
from samlib.everything.refilter import remove_small_regions
from samlib.models.embeddings import compute_embedding
from samlib.records.build import RECORD_KEYS


def colored_disks(shape=(96, 128), n=8, seed=0):
    """Disks of random colours on black: (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    img = np.zeros((*shape, 3), np.uint8)
    for _ in range(n):
        r, c = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10)
        rr, cc = disk((r, c), rng.integers(6, 16), shape=shape)
        img[rr, cc] = rng.integers(60, 255, 3)
    return img


def assert_same_records(ours, ref):
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref, strict=True):
        assert tuple(a) == RECORD_KEYS
        assert set(a) == set(b)
        if isinstance(b["segmentation"], np.ndarray):
            assert a["segmentation"].shape == b["segmentation"].shape
            assert np.array_equal(a["segmentation"], b["segmentation"])
        else:
            assert a["segmentation"] == b["segmentation"]
        assert abs(a["predicted_iou"] - b["predicted_iou"]) <= 1e-6
        for key in ("area", "bbox", "point_coords", "stability_score", "crop_box"):
            assert a[key] == b[key], key


CASES = [
    dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.1, box_nms_thresh=1.0),
    dict(
        points_per_side=7,
        pred_iou_thresh=0.05,
        stability_score_thresh=0.1,
        points_per_batch=5,
        box_nms_thresh=1.0,
    ),
    dict(
        points_per_side=6,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.1,
        crop_n_layers=1,
        box_nms_thresh=0.95,
        min_mask_region_area=30,
    ),
    dict(
        points_per_side=6,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.1,
        output_mode="coco_rle",
        box_nms_thresh=1.0,
        stability_score_offset=0.5,
    ),
    dict(
        points_per_side=5,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.1,
        output_mode="uncompressed_rle",
        box_nms_thresh=1.0,
        min_mask_region_area=50,
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("params", CASES)
def test_equals_stock_generator(sharp_sam, params):
    img = colored_disks()
    ref = SamAutomaticMaskGenerator(sharp_sam, **params).generate(img)
    ours = segment_everything(sharp_sam, img, **params)
    assert len(ref) >= 3  # the comparison means something
    assert_same_records(ours, ref)


def test_point_decoder_is_bit_identical(sharp_sam):
    torch.manual_seed(0)
    feats = torch.randn(1, 32, 16, 16)
    pts = torch.rand(12, 2, dtype=torch.float64) * 256
    pe = sharp_sam.prompt_encoder
    with torch.no_grad():
        sparse, dense = pe(
            points=(pts[:, None], torch.ones(12, 1, dtype=torch.int)), boxes=None, masks=None
        )
        ref_m, ref_i = sharp_sam.mask_decoder(feats, pe.get_dense_pe(), sparse, dense, True)
    m, i = PointDecoder(sharp_sam, feats)(pts)
    assert torch.equal(m, ref_m) and torch.equal(i, ref_i)


def test_chunked_decode_equals_stock_batch(sharp_sam):
    # the stock generator decodes 13 points at once; our image-side work runs 1, 2, 5 and
    # 13 at a time
    torch.manual_seed(3)
    feats = torch.randn(1, 32, 16, 16)
    pts = torch.rand(13, 2, dtype=torch.float64) * 256
    pe = sharp_sam.prompt_encoder
    with torch.no_grad():
        sparse, dense = pe(
            points=(pts[:, None], torch.ones(13, 1, dtype=torch.int)), boxes=None, masks=None
        )
        ref_m, ref_i = sharp_sam.mask_decoder(feats, pe.get_dense_pe(), sparse, dense, True)
    dec = PointDecoder(sharp_sam, feats)
    for chunk in (1, 2, 5, 13):  # a chunk of one at the end with 2 and 5
        m, i = dec(pts, chunk)
        assert torch.equal(m, ref_m) and torch.equal(i, ref_i)
    floor = float(ref_i.median())
    iou, parts = dec.decode(pts, 5, floor)
    assert torch.equal(iou, ref_i)
    seen = []
    for s, e, sel, low in parts:
        want = torch.nonzero((ref_i[s:e] > floor).any(dim=1)).flatten()
        assert torch.equal(sel, want)  # only prompts with a mask above the floor upscaled
        assert torch.equal(low, ref_m[s:e][sel])
        seen.append((s, e))
    assert seen == [(0, 5), (5, 10), (10, 13)]


class CallCounter:
    def __init__(self, model):
        self.calls = 0
        self.handles = [m.register_forward_pre_hook(self.hook) for m in model.modules()]

    def hook(self, *args):
        self.calls += 1

    def remove(self):
        for h in self.handles:
            h.remove()


@pytest.mark.slow
def test_refilter_equals_fresh_run_without_model(sharp_sam):
    img = colored_disks(seed=1)
    base = dict(points_per_side=6, crop_n_layers=1, box_nms_thresh=0.9)
    cands = generate_candidates(
        sharp_sam, img, GeneratorParams(**base), iou_floor=0.0, stability_floor=0.05
    )
    assert len(cands) > 20
    counter = CallCounter(sharp_sam)
    changes = [
        dict(pred_iou_thresh=0.0, stability_score_thresh=0.1),
        dict(pred_iou_thresh=0.1, stability_score_thresh=0.3, box_nms_thresh=1.0),
        dict(
            pred_iou_thresh=0.0,
            stability_score_thresh=0.05,
            crop_nms_thresh=0.5,
            min_mask_region_area=40,
            output_mode="coco_rle",
        ),
        # again, now from the masks cleaned for the previous change (cached on cands)
        dict(pred_iou_thresh=0.1, stability_score_thresh=0.3, min_mask_region_area=40),
    ]
    try:
        results = [refilter(cands, **c) for c in changes]
        assert counter.calls == 0
        assert cands.cleaned and {area for _, area in cands.cleaned} == {40}
    finally:
        counter.remove()
    for c, ours in zip(changes, results, strict=True):
        ref = SamAutomaticMaskGenerator(sharp_sam, **{**base, **c}).generate(img)
        assert_same_records(ours, ref)
    assert len(results[0]) != len(results[1])


def test_refilter_refuses_what_needs_a_new_decode(sharp_sam):
    img = colored_disks()
    cands = generate_candidates(sharp_sam, img, GeneratorParams(points_per_side=4))
    with pytest.raises(ParameterError, match="stability_score_offset"):
        refilter(cands, stability_score_offset=0.5)
    with pytest.raises(ParameterError, match="floors"):
        refilter(cands, pred_iou_thresh=0.1)


def test_progress_and_keys(sharp_sam):
    seen = []
    recs = segment_everything(
        sharp_sam,
        colored_disks(),
        points_per_side=5,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.1,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert recs and all(tuple(r) == RECORD_KEYS for r in recs)
    assert seen[-1] == (25, 25)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


@pytest.mark.parametrize(
    "bad",
    [
        dict(points_per_side=0),
        dict(points_per_batch=MAX_POINTS_PER_BATCH + 1),
        dict(points_per_batch=10**9),
        dict(pred_iou_thresh=1.5),
        dict(stability_score_offset=0.0),
        dict(box_nms_thresh=-0.1),
        dict(crop_n_layers=-1),
        dict(output_mode="png"),
        dict(min_mask_region_area=2.5),
        dict(points_per_side=4, point_grids=[np.full((4, 2), 0.5)]),
        dict(point_grids=[np.full((4, 2), 1.5)]),
        dict(no_such_parameter=1),
    ],
)
def test_bad_parameters_raise(sharp_sam, bad):
    with pytest.raises(ParameterError):
        segment_everything(sharp_sam, colored_disks(), **bad)


FLOAT_PARAMS = [f.name for f in dataclasses.fields(GeneratorParams) if "float" in str(f.type)]


@pytest.mark.parametrize("name", FLOAT_PARAMS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), np.float64("nan")])
def test_non_finite_generator_parameters_raise(name, bad):
    assert len(FLOAT_PARAMS) == 6
    with pytest.raises(ParameterError, match=rf"^{name} must be in .*, got ") as info:
        GeneratorParams(**{name: bad})
    assert "\n" not in str(info.value)
    with pytest.raises(ParameterError, match=name):
        GeneratorParams().replace(**{name: bad})


@pytest.mark.parametrize("name", ["iou_floor", "stability_floor"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), np.float32("nan"), 1.5])
@pytest.mark.parametrize("fast", [False, True])
def test_non_finite_or_out_of_range_decode_floors_raise(tiny_sam, name, bad, fast):
    params = GeneratorParams(points_per_side=2)
    with pytest.raises(ParameterError, match=rf"^{name} must be in \[0.0, 1.0\], got ") as info:
        generate_candidates(tiny_sam, colored_disks(), params, fast=fast, **{name: bad})
    assert "\n" not in str(info.value)
    if not fast:
        with pytest.raises(ParameterError, match=name):
            decode_candidates(tiny_sam, colored_disks(), params, **{name: bad})


def test_bad_image_raises(sharp_sam):
    with pytest.raises(ImageError, match="uint8"):
        segment_everything(sharp_sam, np.zeros((8, 8, 3), np.float32))


def test_point_grids_and_help():
    grid = np.array([[0.25, 0.25], [0.75, 0.5]])
    p = GeneratorParams.from_kwargs(point_grids=[grid])
    assert p.points_per_side is None and np.array_equal(p.grids()[0], grid)
    assert GeneratorParams().grids()[0].shape == (32 * 32, 2)
    fields = set(GeneratorParams.__dataclass_fields__)
    assert set(PARAM_HELP) == fields


def test_full_resolution_masks_never_stacked(sharp_sam, monkeypatch):
    # memory must not grow with the number of candidates: at most one decode chunk of
    # full-resolution logits exists at a time, and candidates are kept as run lengths

    seen = []
    original = candidates.upsample_like_stock

    def spy(model, low, input_size, original_size):
        seen.append(low.shape[0])
        return original(model, low, input_size, original_size)

    monkeypatch.setattr(candidates, "upsample_like_stock", spy)

    params = GeneratorParams(points_per_side=8, points_per_batch=64)
    cands = decode_candidates(
        sharp_sam, colored_disks(), params, iou_floor=0.0, stability_floor=0.0, chunk=8
    )
    assert len(cands) == 3 * 64 and len(seen) == 8 and max(seen) <= 3 * 8
    assert all(isinstance(r, np.ndarray) and r.ndim == 1 for r in cands.rles)


@pytest.fixture
def one_thread():
    """PyTorch's CPU kernels choose other code paths with one thread (as on many laptops)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("k", [1, 4, 9])
def test_upsampling_chosen_masks_equals_stock_batch(sharp_sam, one_thread, k):
    # the stock generator upsamples (B, 3, L, L); upsampling only k chosen masks must
    # give the same bits, which a (k, 1, L, L) call does not on one thread
    side = 4 * sharp_sam.prompt_encoder.image_embedding_size[0]
    low = torch.randn(6, 3, side, side, generator=torch.Generator().manual_seed(k)) * 20
    size = sharp_sam.image_encoder.img_size
    with torch.no_grad():
        ref = sharp_sam.postprocess_masks(low, (size, size), (300, 300)).flatten(0, 1)
    pick = torch.randperm(18, generator=torch.Generator().manual_seed(1))[:k]
    ours = upsample_like_stock(sharp_sam, low.flatten(0, 1)[pick], (size, size), (300, 300))
    assert torch.equal(ours, ref[pick])


def test_equals_stock_generator_on_one_thread(sharp_sam, one_thread):
    params = CASES[0]
    img = colored_disks()
    ref = SamAutomaticMaskGenerator(sharp_sam, **params).generate(img)
    assert len(ref) >= 3
    assert_same_records(segment_everything(sharp_sam, img, **params), ref)


@pytest.mark.parametrize("b", [1, 3])
def test_upscale_equals_stock_layers(sharp_sam, b):
    # channels-last convolutions and in-place LayerNorm2d/GELU: the stock bits and layout

    dec = sharp_sam.mask_decoder
    c = dec.output_upscaling[0].in_channels
    torch.manual_seed(b)
    src = torch.randn(b, 20 * 20, c).transpose(1, 2).view(b, c, 20, 20)  # as the decoder
    with torch.no_grad():
        ref = dec.output_upscaling(src)
        for _ in range(2):  # the first call checks the channels-last path, later ones use it
            out = upscale(dec, src)
            assert torch.equal(out, ref) and out.stride() == ref.stride()


def test_channels_last_convolution_used_only_where_bits_agree(monkeypatch):
    # a convolution whose channels-last path rounds differently is always run as stock

    monkeypatch.setattr(decoder, "_CL_FORMAT", {})

    class Drifting(torch.nn.ConvTranspose2d):
        def forward(self, x):
            out = super().forward(x)
            return out + 1e-6 if x.is_contiguous(memory_format=torch.channels_last) else out

    torch.manual_seed(0)
    conv = Drifting(8, 4, 2, 2)
    x = torch.randn(1, 8, 6, 6)  # contiguous: the stock call is not channels-last
    with torch.no_grad():
        ref = torch.nn.ConvTranspose2d.forward(conv, x)
        for _ in range(2):
            assert torch.equal(decoder._conv_t(conv, x), ref)
    assert list(decoder._CL_FORMAT.values()) == [None]  # checked once, refused


@pytest.mark.parametrize("mode", ["holes", "islands"])
def test_small_region_removal_equals_stock(mode):
    rng = np.random.default_rng(0)
    speckled = rng.random((120, 160)) < 0.5  # thousands of pieces and holes
    blob = np.zeros((120, 160), dtype=bool)
    blob[20:80, 30:110] = True
    blob[40:45, 50:55] = False  # a small hole
    blob[100:103, 10:13] = True  # a small island
    tiny = np.zeros((40, 40), dtype=bool)
    tiny[5:8, 5:8] = tiny[20:22, 20:22] = True  # every island small: the largest stays
    for mask in (speckled, blob, tiny, np.zeros((30, 30), dtype=bool)):
        for area in (1, 10, 50, 10_000):
            ours, changed = remove_small_regions(mask, area, mode)
            ref, ref_changed = stock(mask, area, mode)
            assert changed == ref_changed
            np.testing.assert_array_equal(ours, ref)
    assert remove_small_regions(blob, 50, mode)[1]  # the small hole / island is removed


def test_small_region_removal_refuses_an_unknown_mode():
    with pytest.raises(ParameterError, match="mode"):
        remove_small_regions(np.ones((4, 4), dtype=bool), 2, "edges")


@pytest.mark.parametrize("fast", [False, True], ids=["exact", "fast"])
def test_an_embedding_of_another_image_is_refused(sharp_sam, fast):
    # both decoders walk the same crops, so both check the embedding they are given
    img = colored_disks()
    other = colored_disks(seed=1)
    params = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.1)
    with pytest.raises(ParameterError, match="another image of the same size"):
        segment_everything(
            sharp_sam, img, fast=fast, embedding=compute_embedding(sharp_sam, other), **params
        )
    small = np.ascontiguousarray(img[:64, :64])
    with pytest.raises(ParameterError, match=r"is of a \(64, 64\) image"):
        segment_everything(
            sharp_sam, img, fast=fast, embedding=compute_embedding(sharp_sam, small), **params
        )
    own = compute_embedding(sharp_sam, img)
    given = segment_everything(sharp_sam, img, fast=fast, embedding=own, **params)
    fresh = segment_everything(sharp_sam, img, fast=fast, **params)
    assert len(given) == len(fresh) > 0
    for a, b in zip(given, fresh, strict=True):
        assert np.array_equal(a["segmentation"], b["segmentation"]) and a["bbox"] == b["bbox"]


def test_every_decoder_shares_one_cache_of_the_image_terms(sharp_sam):
    feats = compute_embedding(sharp_sam, colored_disks()).features
    terms = image_terms(sharp_sam, feats)
    dec = PointDecoder(sharp_sam, feats)
    assert dec.k0 is terms.t2i_k and dec.q0 is terms.i2t_q and dec.keys_c is terms.x
    assert image_terms(sharp_sam, feats) is terms  # cached
    with torch.no_grad():
        feats.add_(0.0)  # an in-place change (version bump) makes the terms stale
    assert image_terms(sharp_sam, feats) is not terms


def test_points_per_batch_admits_every_value_the_app_offers():
    for n in (1, 16, 64, 256, MAX_POINTS_PER_BATCH):
        assert GeneratorParams(points_per_batch=n).points_per_batch == n
    with pytest.raises(ParameterError, match=r"points_per_batch must be in \[1, 1024\], got 4096"):
        GeneratorParams(points_per_batch=4096)


@pytest.mark.parametrize("fast", [False, True])
def test_crop_layers_smaller_than_32_px_are_refused_before_encoding(sharp_sam, monkeypatch, fast):
    encoded = []
    monkeypatch.setattr(crops, "compute_embedding", lambda *a, **k: encoded.append(a))
    img = colored_disks((64, 80))
    boxes, _ = generate_crop_boxes((64, 80), 2, GeneratorParams().crop_overlap_ratio)
    w = min(x1 - x0 for x0, _, x1, _ in boxes)
    h = min(y1 - y0 for _, y0, _, y1 in boxes)
    assert min(w, h) < 32  # the stock generator would encode these crops
    with pytest.raises(
        ParameterError,
        match=rf"crop_n_layers=2 cuts this 80 x 64 px image into crops of {w} x {h} px, under "
        r"32 px a side; use crop_n_layers=1 or fewer",
    ):
        segment_everything(sharp_sam, img, points_per_side=4, crop_n_layers=2, fast=fast)
    assert encoded == []


def test_crop_layers_are_refused_for_the_image_at_hand():
    params = GeneratorParams(points_per_side=4, crop_n_layers=3)
    assert len(crops.crop_layout((1024, 1024), params).boxes) == 1 + 4 + 16 + 64
    with pytest.raises(ParameterError, match="use crop_n_layers=2 or fewer"):
        crops.crop_layout((150, 150), params)
    # no crop layers: even a tiny image is segmented whole
    assert len(crops.crop_layout((8, 8), GeneratorParams(points_per_side=4)).boxes) == 1
