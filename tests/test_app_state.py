"""The app's UI-free logic: work images, prompted objects, everything runs, exports."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.draw import disk

from samlib.app.everything_run import area_filter, refilter_run, run_everything
from samlib.app.results import download_makers, params_json, prompts_recipe, record_rows
from samlib.app.session import (
    RecentUploads,
    estimate_encode_seconds,
    prepare_image,
    reference_labels,
)
from samlib.errors import CorruptImageError, ParameterError, ReferenceLabelsError
from samlib.image.display import DisplaySettings
from samlib.image.microscopy import as_image
from samlib.models.embeddings import compute_embedding
from samlib.outputs.export import EXPORTS
from samlib.prompts.objects import (
    PromptedObject,
    PromptSet,
    mask_contains,
    predict_candidates,
    records_of,
)
from tests.conftest import make_disks

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)
RECORD_KEYS = {
    "segmentation",
    "area",
    "bbox",
    "predicted_iou",
    "point_coords",
    "stability_score",
    "crop_box",
}


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_prepare_image_renders_rgb_and_keeps_the_original(dtype):
    img, labels = make_disks(dtype=dtype)
    work = prepare_image(as_image(img, name="d.tif"), pixel_size_um=0.5, ground_truth=labels)
    assert work.rgb8.shape == (*img.shape, 3) and work.rgb8.dtype == np.uint8
    assert work.size_xy == (img.shape[1], img.shape[0])
    assert work.intensities.dtype == dtype and work.intensities.shape == (*img.shape, 1)
    assert work.rgb8[30, 40].min() > work.rgb8[0, 0].max()  # disk brighter than background
    other = prepare_image(as_image(img), DisplaySettings(channels=(0, None, None)))
    assert other.key != work.key


def test_prepare_image_refuses_a_bad_pixel_size_and_drops_a_mismatched_reference():
    img, labels = make_disks()
    with pytest.raises(ParameterError, match="pixel size"):
        prepare_image(as_image(img), pixel_size_um=-1.0)
    assert prepare_image(as_image(img), ground_truth=labels[:10]).ground_truth is None


def _tiff(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array)
    return buf.getvalue()


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("encode", "dtype"),
    [
        (_tiff, np.uint8),
        (_tiff, np.uint16),
        (_tiff, np.int32),
        (_tiff, np.float32),
        (_png, np.uint8),
        (_png, np.uint16),
    ],
)
def test_reference_labels_read_a_label_image_of_the_images_size(encode, dtype):
    img, labels = make_disks(shape=(40, 56))
    image = as_image(img, name="d.tif")
    got = reference_labels(image, encode(labels.astype(dtype)), name="ref")
    assert got.shape == (40, 56) and got.dtype.kind in "ui"
    np.testing.assert_array_equal(got, labels)
    work = prepare_image(image, ground_truth=got)
    assert work.ground_truth is got


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.zeros((40, 57), np.uint16), "57 x 40 px but the image d.tif is 56 x 40 px"),
        (np.zeros((30, 56), np.uint16), "56 x 30 px but the image d.tif is 56 x 40 px"),
        (np.full((40, 56), 1.5, np.float32), "whole numbers"),
        (np.full((40, 56), np.nan, np.float32), "whole numbers"),
        (np.full((40, 56), -2.0, np.float32), ">= 0"),
        (np.full((40, 56), -2, np.int16), ">= 0"),
        (np.zeros((40, 56, 3), np.uint8), "3 channel(s)"),
        (np.zeros((2, 40, 56), np.uint16), "2 channel(s)"),
        (np.zeros((6, 40, 56), np.uint16), "6 plane(s)"),
    ],
)
def test_reference_labels_that_do_not_fit_are_refused_in_one_line(labels, message):
    image = as_image(make_disks(shape=(40, 56))[0], name="d.tif")
    with pytest.raises(ReferenceLabelsError) as caught:
        reference_labels(image, _tiff(labels), name="ref.tif")
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert str(caught.value).startswith("ref.tif")


def test_reference_labels_of_a_damaged_file_are_a_read_error():
    image = as_image(make_disks(shape=(40, 56))[0], name="d.tif")
    with pytest.raises(CorruptImageError):
        reference_labels(image, _tiff(np.zeros((40, 56), np.uint16))[:60], name="ref.tif")


def test_recent_uploads_keep_the_newest_and_a_lookup_makes_one_newest():
    kept = RecentUploads(max_items=2)
    kept.put("id-a", "a")
    kept.put("id-b", "b")
    assert kept.get("id-a") == "a"  # now the newest: b is the oldest
    kept.put("id-c", "c")
    assert kept.values() == ["a", "c"] and len(kept) == 2
    assert "id-b" not in kept and kept.get("id-b") is None
    kept.put("id-a", "a2")  # a new value for a kept upload does not grow the session
    assert kept.values() == ["c", "a2"]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ParameterError, match="max_items"):
            RecentUploads(max_items=bad)


def test_encode_estimate_grows_with_the_model_and_is_faster_on_gpu():
    assert estimate_encode_seconds(91_000_000, "cpu") == pytest.approx(10.0, rel=0.1)
    assert estimate_encode_seconds(636_000_000, "cpu") > estimate_encode_seconds(91e6, "cpu")
    assert estimate_encode_seconds(91_000_000, "cuda") < 1.0


def test_prompted_object_record_has_the_workshop_keys_and_true_bbox():
    mask = np.zeros((50, 60), bool)
    rr, cc = disk((20, 30), 8, shape=mask.shape)
    mask[rr, cc] = True
    obj = PromptedObject(mask, 0.9, 0.8, points=np.array([[30.5, 20.5]]), labels=np.array([1]))
    rec = obj.record()
    assert set(rec) == RECORD_KEYS
    # SAM's record rule: XYWH from the extreme pixel indices (w = max col - min col)
    assert rec["area"] == mask.sum() and rec["bbox"] == [cc.min(), rr.min(), 14, 14]
    assert PromptedObject(np.zeros((5, 5), bool), 0, 0).record()["bbox"] == [0, 0, 0, 0]
    assert rec["point_coords"] == [[30.5, 20.5]] and rec["crop_box"] == [0, 0, 60, 50]
    boxed = PromptedObject(mask, 0.5, 0.5, box=(10.0, 4.0, 50.0, 36.0)).record()
    assert boxed["point_coords"] == [[30.0, 20.0]]  # the box centre
    assert mask_contains(mask, 30.2, 20.7) and not mask_contains(mask, 2.0, 2.0)
    assert not mask_contains(mask, 70.0, 20.0)  # outside the image
    assert len(records_of([obj, obj])) == 2


def test_predict_candidates_points_and_several_boxes(tiny_sam):
    img, _ = make_disks()
    work = prepare_image(as_image(img))
    emb = compute_embedding(tiny_sam, work.rgb8)
    pts = PromptSet(np.array([[40.0, 30.0]]), np.array([1]))
    res = predict_candidates(tiny_sam, emb, pts, multimask=True)
    assert res.masks.shape == (1, 3, 96, 128) and res.scores.shape == (1, 3)
    assert np.all((res.stability >= 0) & (res.stability <= 1))
    single = predict_candidates(tiny_sam, emb, pts, multimask=False)
    assert single.masks.shape == (1, 1, 96, 128)
    boxes = PromptSet(boxes=np.array([[10.0, 10, 60, 50], [70, 30, 120, 90]]))
    res = predict_candidates(tiny_sam, emb, boxes, multimask=True)
    assert res.masks.shape[0] == 2 and res.best_masks().shape == (2, 96, 128)
    raw = predict_candidates(tiny_sam, emb, boxes, multimask=True, clip_to_box=False)
    for i, (x0, y0, x1, y1) in enumerate(boxes.boxes.astype(int)):
        inside = np.zeros((96, 128), bool)
        inside[y0 : y1 + 1, x0 : x1 + 1] = True
        assert not (res.masks[i] & ~inside).any()  # the app keeps a box's masks inside it
        assert np.array_equal(res.masks[i], raw.masks[i] & inside)
    assert (raw.masks & ~res.masks).any()  # random weights do spill past the boxes
    objs = res.objects()
    assert [o.box for o in objs] == [(10.0, 10.0, 60.0, 50.0), (70.0, 30.0, 120.0, 90.0)]
    picked = res.objects(1)
    assert picked[0].predicted_iou == pytest.approx(float(res.scores[0, 1]))


def test_everything_run_refilters_and_area_filters_without_the_model(tiny_sam, monkeypatch):
    img, _ = make_disks()
    work = prepare_image(as_image(img))
    run = run_everything(tiny_sam, work, {"points_per_side": 6}, iou_floor=0.0, stability_floor=0.0)
    assert run.image_key == work.key and run.grid_points.shape == (36, 2)
    assert run.grid_points.max(axis=0).tolist() < [128, 96]
    monkeypatch.setattr(tiny_sam, "forward", None)  # any model call would now fail
    monkeypatch.setattr("samlib.everything.candidates.decode_candidates", None)
    loose = refilter_run(run, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    strict = refilter_run(run, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.3)
    assert len(strict.records) < len(loose.records) == run.n_candidates
    lo, hi = loose.area_bounds(drop_whole_image=False)
    mid = (lo + hi) / 2
    half = area_filter(loose, (lo, mid), drop_whole_image=False)
    assert half.keep.sum() == (loose.areas <= mid).sum()
    assert set(half.status()) <= {"kept", "outside area range", "whole image"}
    assert all(r["area"] <= mid for r in half.kept)


def test_exports_round_trip_and_provenance(tiny_sam):
    img, _ = make_disks()
    work = prepare_image(as_image(img, name="disks.tif"), pixel_size_um=0.25)
    masks = []
    for r, c, rad in ((30, 40, 12), (60, 90, 18)):
        m = np.zeros(img.shape, bool)
        rr, cc = disk((r, c), rad, shape=m.shape)
        m[rr, cc] = True
        masks.append(m)
    objects = [
        PromptedObject(m, 0.9, 0.95, points=np.array([[c + 0.5, r + 0.5]]), labels=np.array([1]))
        for m, (r, c, _) in zip(masks, ((30, 40, 12), (60, 90, 18)), strict=True)
    ]
    records = records_of(objects)
    rows = record_rows(records)
    assert [r["area"] for r in rows] == [int(m.sum()) for m in masks]
    params = params_json(work, prompts_recipe(work, tiny_sam, objects), n_masks=2)
    files = {k: make() for k, make in download_makers(work, records, params).items()}
    assert set(files) == set(EXPORTS)
    labels = tifffile.imread(io.BytesIO(files["labels_tiff"]))
    assert labels.dtype == np.uint16 and labels.max() == 2
    assert np.array_equal(labels == 1, masks[0]) and np.array_equal(labels == 2, masks[1])
    params = json.loads(files["params"])
    assert params["recipe"] == 1 and params["kind"] == "prompts"
    assert params["image"]["pixel_size_um"] == 0.25
    assert params["objects"][1]["points"] == [[90.5, 60.5]]
    assert params["provenance"]["image"]["name"] == "disks.tif"
    assert params["provenance"]["n_masks"] == 2
    csv = files["csv"].decode().splitlines()
    assert len(csv) == 3 and "area_um2" in csv[0]
    with zipfile.ZipFile(io.BytesIO(files["rois"])) as z:
        assert len(z.namelist()) == 2
