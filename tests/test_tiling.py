"""Tiled segment-everything: layout, stitching, de-duplication, memory, equality with untiled."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from skimage.draw import disk
from skimage.measure import label, regionprops

import samlib.tiling.tiles as tiling
from samlib.datasets.samples import load_sample
from samlib.errors import ParameterError, PromptError
from samlib.everything.generate import segment_everything
from samlib.everything.params import GeneratorParams
from samlib.models.embeddings import compute_embedding
from samlib.prompts.prompting import predict
from samlib.records import rle as rlelib
from samlib.records.build import RECORD_KEYS
from samlib.records.masks import record_mask
from samlib.tiling.prompts import TiledEmbeddings, predict_tiled
from samlib.tiling.stitch import Piece, piece_record, piece_rle, pieces_from_records, stitch_pieces
from samlib.tiling.tiles import (
    default_tiling,
    refilter_tiled,
    segment_everything_tiled,
    tile_layout,
    tiled_candidates,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine, two threads spin and run ~15x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def colored_disks(shape, n, seed=0):
    """Disks of random colours on black: (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    img = np.zeros((*shape, 3), np.uint8)
    for _ in range(n):
        r, c = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10)
        rr, cc = disk((r, c), rng.integers(6, 16), shape=shape)
        img[rr, cc] = rng.integers(60, 255, 3)
    return img


def oracle_records(window: np.ndarray, output_mode: str = "binary_mask") -> list[dict]:
    """A perfect 'generator': one record per connected bright region of the window."""
    lab = label(window.any(axis=2))
    h, w = lab.shape
    out = []
    for rp in regionprops(lab):
        m = lab == rp.label
        r0, c0, r1, c1 = rp.bbox
        if output_mode == "binary_mask":
            seg = m
        else:
            seg = rlelib.to_uncompressed(rlelib.encode(m), (h, w))
        out.append(
            {
                "segmentation": seg,
                "area": int(rp.area),
                "bbox": [c0, r0, c1 - 1 - c0, r1 - 1 - r0],  # stock: last - first
                "predicted_iou": 0.9,
                "point_coords": [[c0 + 0.5, r0 + 0.5]],
                "stability_score": 0.95,
                "crop_box": [0, 0, w, h],
            }
        )
    return out


@pytest.fixture
def oracle(monkeypatch):
    """Replace the model's generator inside tiling by :func:`oracle_records`."""
    windows = []

    def fake(model, window, tile, index, size, *args):
        windows.append(window.shape)
        records = oracle_records(window, "uncompressed_rle")
        return pieces_from_records(tile, records, size, index), len(records)

    monkeypatch.setattr(tiling, "tile_pieces", fake)
    monkeypatch.setattr(tiling, "default_tiling", lambda model: (100, 30))
    return windows


def paint(shape, objects):
    """RGB image and label image of disks (row, col, radius) and boxes (r0, c0, r1, c1)."""
    labels = np.zeros(shape, np.int32)
    for i, obj in enumerate(objects, start=1):
        if len(obj) == 3:
            rr, cc = disk(obj[:2], obj[2], shape=shape)
            labels[rr, cc] = i
        else:
            r0, c0, r1, c1 = obj
            labels[r0:r1, c0:c1] = i
    rgb = np.zeros((*shape, 3), np.uint8)
    rgb[labels > 0] = 200
    return rgb, labels


# --- layout -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "tile", "halo"),
    [((300, 400), 100, 30), ((97, 251), 40, 7), ((64, 64), 100, 16), ((500, 130), 128, 0)],
)
def test_layout_covers_image_with_halo(size, tile, halo):
    tiles = tile_layout(size, tile, halo)
    h, w = size
    core_count = np.zeros(size, np.int32)
    shapes = set()
    for t in tiles:
        cx0, cy0, cx1, cy1 = t.core
        wx0, wy0, wx1, wy1 = t.window
        core_count[cy0:cy1, cx0:cx1] += 1
        assert cx1 - cx0 <= tile and cy1 - cy0 <= tile
        assert 0 <= wx0 and 0 <= wy0 and wx1 <= w and wy1 <= h
        # The window holds the core plus the halo on every side, clipped to the image.
        assert wx0 <= max(0, cx0 - halo) and wy0 <= max(0, cy0 - halo)
        assert wx1 >= min(w, cx1 + halo) and wy1 >= min(h, cy1 + halo)
        shapes.add(t.shape)
    assert np.all(core_count == 1), "cores must partition the image"
    assert len(shapes) == 1, "every window has the same size"
    assert len(tiles) == -(-h // tile) * -(-w // tile)


def test_default_tiling_windows_are_the_model_input(tiny_sam):
    tile, halo = default_tiling(tiny_sam)
    assert tile + 2 * halo == tiny_sam.image_encoder.img_size
    assert halo > 0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(tile_size=0),
        dict(halo=-1),
        dict(tile_size=1.5),
        dict(tile_iou_thresh=1.5),
        dict(tile_iou_thresh="high"),
    ],
)
def test_bad_tiling_parameters_raise(tiny_sam, kwargs):
    with pytest.raises(ParameterError):
        segment_everything_tiled(tiny_sam, np.zeros((40, 40, 3), np.uint8), **kwargs)


def test_unknown_generator_parameter_raises_before_work(tiny_sam):
    calls = []
    with pytest.raises(ParameterError, match="points_per_sid"):
        segment_everything_tiled(
            tiny_sam, np.zeros((40, 40, 3), np.uint8), points_per_sid=4, progress=calls.append
        )
    assert calls == []


# --- with the model -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["binary_mask", "uncompressed_rle", "coco_rle"])
def test_single_tile_equals_untiled(sharp_sam, mode):
    img = colored_disks((96, 128), n=8)
    kw = dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.1)
    ref = segment_everything(sharp_sam, img, output_mode=mode, **kw)
    ours = segment_everything_tiled(sharp_sam, img, output_mode=mode, **kw)
    assert len(ref) > 0
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref, strict=True):
        assert tuple(a) == RECORD_KEYS
        if mode == "binary_mask":
            assert np.array_equal(a["segmentation"], b["segmentation"])
        else:
            assert a["segmentation"] == b["segmentation"]
        for key in RECORD_KEYS[1:]:
            assert a[key] == b[key], key


def test_multi_tile_records_are_in_image_frame(sharp_sam):
    img = colored_disks((230, 300), n=30, seed=3)
    calls = []
    kw = dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.1)
    recs = segment_everything_tiled(
        sharp_sam, img, tile_size=100, halo=20, progress=lambda d, n: calls.append((d, n)), **kw
    )
    n_tiles = len(tile_layout((230, 300), 100, 20))
    assert n_tiles == 9
    assert calls == [(i, n_tiles) for i in range(1, n_tiles + 1)]
    assert len(recs) > 0
    windows = [t.window for t in tile_layout((230, 300), 100, 20)]
    xs, ys = {w[0] for w in windows} | {w[2] for w in windows}, {w[1] for w in windows}
    ys |= {w[3] for w in windows}
    for r in recs:
        assert tuple(r) == RECORD_KEYS
        m = record_mask(r)
        assert m.shape == (230, 300)
        assert r["area"] == m.sum()
        rows, cols = np.nonzero(m)
        x, y, w, h = r["bbox"]
        assert [x, y, w, h] == [cols.min(), rows.min(), cols.max() - x, rows.max() - y]
        cx, cy, cw, ch = r["crop_box"]
        assert 0 <= cx and 0 <= cy and cx + cw <= 300 and cy + ch <= 230
        assert cx <= x and cy <= y and x + w < cx + cw and y + h < cy + ch
        # The crop box is a window, or the hull of the windows a merged mask came from.
        assert {cx, cx + cw} <= xs and {cy, cy + ch} <= ys


def test_tiled_candidates_refilter_live_equals_a_tiled_run_at_those_thresholds(sharp_sam):
    """Decoding once at low floors and re-filtering (the app's live filters) gives the
    records a tiled run decoded at the thresholds gives, for several thresholds."""
    img = colored_disks((230, 300), n=30, seed=3)
    p = GeneratorParams(points_per_side=6)
    calls = []
    tc = tiled_candidates(
        sharp_sam,
        img,
        p,
        tile_size=100,
        halo=20,
        iou_floor=0.0,
        stability_floor=0.0,
        progress=lambda d, n: calls.append((d, n)),
    )
    assert calls == [(i, 9) for i in range(1, 10)] and len(tc.tiles) == 9
    assert len(tc) == sum(len(c) for c in tc.per_tile) > 0
    seen = set()
    for iou, stab, nms in [(0.0, 0.1, 0.7), (0.3, 0.5, 0.5), (0.6, 0.8, 0.9)]:
        live = refilter_tiled(
            tc, pred_iou_thresh=iou, stability_score_thresh=stab, box_nms_thresh=nms
        )
        run = segment_everything_tiled(
            sharp_sam,
            img,
            tile_size=100,
            halo=20,
            points_per_side=6,
            pred_iou_thresh=iou,
            stability_score_thresh=stab,
            box_nms_thresh=nms,
            output_mode="binary_mask",
        )
        assert len(live) == len(run)
        for a, b in zip(live, run, strict=True):
            assert np.array_equal(a["segmentation"], b["segmentation"])
            for key in RECORD_KEYS[1:]:
                assert a[key] == b[key], key
        seen.add(len(live))
    assert len(seen) > 1  # the thresholds changed the result


# --- stitching with a perfect generator -----------------------------------------------------

OBJECTS = [
    (100, 100, 15),  # on the corner of four cores
    (150, 200, 18),  # on a vertical core border
    (200, 330, 12),  # on a horizontal core border
    (50, 50, 10),  # inside one core
    (5, 395, 8),  # cut by the image border only
    (250, 20, 262, 380),  # a bar longer than any window: merged from pieces
]


@pytest.mark.parametrize("mode", ["binary_mask", "coco_rle"])
def test_objects_across_borders_come_out_once(oracle, mode):
    rgb, labels = paint((300, 400), OBJECTS)
    recs = segment_everything_tiled(None, rgb, output_mode=mode)
    assert len(oracle) == 12 and set(oracle) == {(160, 160, 3)}
    assert len(recs) == len(OBJECTS)
    for i in range(1, len(OBJECTS) + 1):
        truth = labels == i
        same = [r for r in recs if np.array_equal(record_mask(r), truth)]
        assert len(same) == 1, f"object {i}: {OBJECTS[i - 1]}"
        rows, cols = np.nonzero(truth)
        assert same[0]["area"] == truth.sum()
        assert same[0]["bbox"][:2] == [cols.min(), rows.min()]


@pytest.mark.parametrize(("tile", "halo"), [(100, 24), (64, 16), (128, 8)])
def test_real_nuclei_layout_each_object_once(oracle, monkeypatch, tile, halo):
    # The DSB2018 reference nuclei, split into connected objects, through the stitcher.

    monkeypatch.setattr(tiling, "default_tiling", lambda model: (tile, halo))
    _, labels, _ = load_sample("dsb2018")
    objects = label(labels > 0)
    rgb = np.zeros((*labels.shape, 3), np.uint8)
    rgb[labels > 0] = 255
    recs = segment_everything_tiled(None, rgb, output_mode="coco_rle")
    assert len(oracle) > 4
    assert len(recs) == objects.max()
    # Each record is exactly one object: all of its pixels and nothing else.
    ids = [np.unique(objects[record_mask(r)]) for r in recs]
    assert all(len(i) == 1 and i[0] > 0 for i in ids)
    assert sorted(int(i[0]) for i in ids) == list(range(1, objects.max() + 1))
    sizes = np.bincount(objects.ravel())
    assert all(r["area"] == sizes[i[0]] for r, i in zip(recs, ids, strict=True))


def test_small_halo_loses_whole_view_but_merges_pieces(oracle, monkeypatch):
    # Halo 5 < radius: the disk on the core corner is whole in no window; its cut
    # pieces are merged into the full disk.
    monkeypatch.setattr(tiling, "default_tiling", lambda model: (100, 5))
    rgb, labels = paint((300, 400), [(100, 100, 15)])
    recs = segment_everything_tiled(None, rgb, output_mode="binary_mask")
    assert len(recs) == 1
    assert np.array_equal(recs[0]["segmentation"], labels == 1)


def _piece(mask_full, tile, iou=0.9, order=0, cut=False):
    rows, cols = np.nonzero(mask_full)
    r0, c0 = rows.min(), cols.min()
    return Piece(
        mask=mask_full[r0 : rows.max() + 1, c0 : cols.max() + 1].copy(),
        y0=int(r0),
        x0=int(c0),
        bbox=[int(c0), int(r0), int(cols.max() - c0), int(rows.max() - r0)],
        area=int(mask_full.sum()),
        predicted_iou=iou,
        stability_score=0.9,
        point=[float(c0), float(r0)],
        crop_box=[0, 0, 10, 10],
        tile=tile,
        order=order,
        cut=cut,
    )


def _disk_mask(shape, r, c, rad):
    m = np.zeros(shape, bool)
    m[disk((r, c), rad, shape=shape)] = True
    return m


def test_near_duplicates_across_tiles_are_removed():
    shape = (200, 200)
    tiles = tile_layout(shape, 100, 30)  # 2 x 2
    a = _piece(_disk_mask(shape, 90, 97, 12), tile=0, iou=0.95, order=0)
    b = _piece(_disk_mask(shape, 90, 98, 12), tile=1, iou=0.97, order=1)
    other = _piece(_disk_mask(shape, 30, 30, 8), tile=0, order=2)
    kept = stitch_pieces([a, b, other], tiles)
    assert len(kept) == 2
    # Of the two whole copies, the one whose centre is in its own core wins.
    assert kept[0] is a and kept[1] is other


def test_distinct_masks_of_one_tile_stay_distinct():
    # Nucleus and cell found by both tiles: the nucleus of one tile matches the cell of
    # the other at IoU 0.51, but each tile's two masks must not collapse into one.
    shape = (200, 200)
    tiles = tile_layout(shape, 100, 30)
    nucleus, cell = _disk_mask(shape, 100, 100, 10), _disk_mask(shape, 100, 100, 14)
    pieces = [
        _piece(nucleus, 0, order=0),
        _piece(cell, 0, order=1),
        _piece(nucleus, 1, order=2),
        _piece(cell, 1, order=3),
    ]
    kept = stitch_pieces(pieces, tiles, iou_thresh=0.5)
    assert len(kept) == 2
    assert {p.area for p in kept} == {int(nucleus.sum()), int(cell.sum())}


def test_cut_fragment_outside_its_core_is_dropped():
    shape = (200, 200)
    tiles = tile_layout(shape, 100, 30)  # windows 130 wide; tile 0 sees columns 0..129
    frag = np.zeros(shape, bool)
    frag[20:40, 110:130] = True  # touches tile 0's inner window edge, centre in tile 1's core
    kept = stitch_pieces([_piece(frag, 0, cut=True)], tiles)
    assert kept == []


def test_pieces_from_records_marks_cut_masks():
    shape = (300, 400)
    tiles = tile_layout(shape, 100, 30)
    t = 5  # an inner tile
    x0, y0, x1, y1 = tiles[t].window
    rgb, _ = paint(shape, [(y0 + 40, x0 + 40, 10), (y0 + 60, x1 - 5, 10)])
    recs = oracle_records(np.ascontiguousarray(rgb[y0:y1, x0:x1]), "uncompressed_rle")
    pieces = pieces_from_records(tiles[t], recs, shape, t)
    assert [p.cut for p in pieces] == [False, True]
    assert (pieces[0].y0, pieces[0].x0) == (y0 + 31, x0 + 31)  # skimage disk: distance < radius


def test_piece_rle_equals_full_mask_encoding():
    rng = np.random.default_rng(1)
    shape = (37, 53)
    for _ in range(20):
        full = np.zeros(shape, bool)
        r0, c0 = rng.integers(0, 30), rng.integers(0, 45)
        full[r0 : r0 + rng.integers(1, 8), c0 : c0 + rng.integers(1, 9)] = rng.random() > 0.1
        full[r0, c0] = True
        p = _piece(full, 0)
        assert np.array_equal(piece_rle(p, shape), rlelib.encode(full))
        assert np.array_equal(record_mask(piece_record(p, shape, "coco_rle")), full)
    corner = np.zeros(shape, bool)
    corner[0, 0] = corner[-1, -1] = True
    assert np.array_equal(piece_rle(_piece(corner, 0), shape), rlelib.encode(corner))


def test_stitch_memory_does_not_hold_full_resolution_masks():
    shape = (4000, 4000)  # one full-size bool mask: 16 MB
    tiles = tile_layout(shape, 1000, 100)
    rng = np.random.default_rng(0)
    small = np.zeros((41, 41), bool)
    small[disk((20, 20), 20)] = True
    pieces = []
    for k in range(300):
        t = int(rng.integers(len(tiles)))
        wx0, wy0, wx1, wy1 = tiles[t].window
        y, x = int(rng.integers(wy0, wy1 - 41)), int(rng.integers(wx0, wx1 - 41))
        pieces.append(
            Piece(
                small, y, x, [x, y, 40, 40], int(small.sum()), 0.9, 0.9, [x, y], [0, 0, 1, 1], t, k
            )
        )
    tracemalloc.start()
    try:
        kept = stitch_pieces(pieces, tiles)
        recs = [piece_record(p, shape, "coco_rle") for p in kept]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(recs) >= 200
    assert peak < 4_000_000, f"stitching peaked at {peak / 1e6:.1f} MB"


# --- prompting on tiles ---------------------------------------------------------------------


def test_tiled_prompt_matches_prompt_on_the_window_image(tiny_sam):
    img = colored_disks((300, 420), n=25, seed=4)
    tiled = TiledEmbeddings.build(tiny_sam, img, tile_size=100, halo=30)
    point = np.array([[250.0, 180.0]])  # core of tile (row 1, col 2)
    res = predict_tiled(tiny_sam, tiled, points=point, labels=[1])
    x0, y0, x1, y1 = res.tile.window
    cx0, cy0, cx1, cy1 = res.tile.core
    assert cx0 <= 250 < cx1 and cy0 <= 180 < cy1
    assert list(tiled.embeddings) == [tiled.tiles.index(res.tile)], "only that tile encoded"
    # The same prompt, shifted, on the window cut out as an image of its own.
    crop = np.ascontiguousarray(img[y0:y1, x0:x1])
    ref = predict(tiny_sam, compute_embedding(tiny_sam, crop), points=point - [x0, y0], labels=[1])
    np.testing.assert_array_equal(res.scores, ref.scores[0])
    for k in range(3):
        full = res.mask(k)
        assert full.shape == img.shape[:2]
        assert np.array_equal(full[y0:y1, x0:x1], ref.masks[0, k])
        assert not full[:y0].any() and not full[:, :x0].any()


def test_tiled_prompt_box_picks_a_window_holding_it_and_rejects_wide_prompts(tiny_sam):
    img = colored_disks((300, 420), n=25, seed=4)
    tiled = TiledEmbeddings.build(tiny_sam, img, tile_size=100, halo=30)
    box = np.array([90.0, 80.0, 150.0, 130.0])  # straddles core borders
    res = predict_tiled(tiny_sam, tiled, box=box, multimask=False)
    x0, y0, x1, y1 = res.tile.window
    assert x0 <= 90 and y0 <= 80 and 150 <= x1 and 130 <= y1
    assert res.result.masks.shape == (1, 1, y1 - y0, x1 - x0)
    with pytest.raises(PromptError, match="wider than one tile window"):
        predict_tiled(tiny_sam, tiled, box=[0, 0, 400, 290])
