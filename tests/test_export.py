"""Exports round-trip: label TIFF/PNG, per-mask PNGs, COCO RLE, CSV, ImageJ ROIs, provenance."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import roifile
import tifffile
from PIL import Image
from pycocotools import mask as mask_utils
from skimage.draw import disk, polygon

from samlib.errors import ParameterError
from samlib.image.io import read_image
from samlib.outputs.export import (
    EXPORTS,
    coco_dict,
    export_all,
    label_image,
    label_png_bytes,
    label_tiff_bytes,
    mask_pngs_zip_bytes,
    roi_zip_bytes,
    write_exports,
)
from samlib.outputs.provenance import provenance
from samlib.outputs.roi import mask_contour_xy
from samlib.records.masks import labels_from_masks, labels_from_records
from samlib.records.rle import decode_coco, encode_coco

SHAPE = (90, 110)
DISKS = [(30, 35, 20), (40, 45, 8), (70, 90, 12)]  # the second lies on the first


def _mask(r, c, rad):
    m = np.zeros(SHAPE, bool)
    m[disk((r, c), rad, shape=SHAPE)] = True
    return m


def _records(rle=False):
    out = []
    for i, d in enumerate(DISKS):
        m = _mask(*d)
        out.append(
            {
                "segmentation": encode_coco(m) if rle else m,
                "area": int(m.sum()),
                "bbox": [d[1] - d[2] + 1, d[0] - d[2] + 1, 2 * d[2] - 2, 2 * d[2] - 2],
                "predicted_iou": 0.9 - 0.1 * i,
                "point_coords": [[float(d[1]), float(d[0])]],
                "stability_score": 0.96,
                "crop_box": [0, 0, SHAPE[1], SHAPE[0]],
            }
        )
    return out


def test_overlap_rules():
    masks = [_mask(*d) for d in DISKS]
    by_area = labels_from_masks(masks)
    assert by_area[40, 45] == 2  # the small disk stays visible on the large one
    assert by_area[30, 20] == 1 and by_area[70, 90] == 3
    by_score = labels_from_masks(masks, rule="score", scores=[0.9, 0.5, 0.7])
    assert by_score[40, 45] == 1  # the better-scored large disk wins the overlap
    assert labels_from_masks(masks, rule="input")[40, 45] == 2
    with pytest.raises(ParameterError, match="nope"):
        labels_from_masks(masks, rule="nope")


@pytest.mark.parametrize("rle", [False, True])
def test_label_tiff_and_png_round_trip(rle):
    labels = labels_from_records(_records(rle))
    assert labels.dtype == np.uint16 and set(np.unique(labels)) == {0, 1, 2, 3}
    back = tifffile.imread(io.BytesIO(label_tiff_bytes(labels, pixel_size_um=0.5)))
    np.testing.assert_array_equal(back, labels)

    assert read_image(label_tiff_bytes(labels, pixel_size_um=0.5)).pixel_size_um == pytest.approx(
        0.5
    )
    png = np.asarray(Image.open(io.BytesIO(label_png_bytes(labels))))
    np.testing.assert_array_equal(png, labels)


def test_many_labels_use_uint32_tiff():
    labels = np.arange(70_000, dtype=np.uint32).reshape(280, 250)
    np.testing.assert_array_equal(tifffile.imread(io.BytesIO(label_tiff_bytes(labels))), labels)
    with pytest.raises(ParameterError, match="65535"):
        label_png_bytes(labels)


def test_mask_png_zip():
    records = _records(rle=True)
    with zipfile.ZipFile(io.BytesIO(mask_pngs_zip_bytes(records))) as zf:
        names = sorted(zf.namelist())
        assert names == ["mask_0001.png", "mask_0002.png", "mask_0003.png"]
        for name, d in zip(names, DISKS, strict=True):
            png = np.asarray(Image.open(io.BytesIO(zf.read(name))))
            np.testing.assert_array_equal(png > 0, _mask(*d))


# pycocotools' decoder predates NumPy 2's __array__ copy keyword (harmless warning)
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("rle", [False, True])
def test_coco_rle_decodes_to_masks(rle):
    coco = json.loads(json.dumps(coco_dict(_records(rle), image_name="x.tif")))
    assert coco["images"] == [{"id": 1, "file_name": "x.tif", "height": 90, "width": 110}]
    assert [a["id"] for a in coco["annotations"]] == [1, 2, 3]
    for ann, d in zip(coco["annotations"], DISKS, strict=True):
        seg = dict(ann["segmentation"])
        seg["counts"] = seg["counts"].encode()
        np.testing.assert_array_equal(mask_utils.decode(seg).astype(bool), _mask(*d))
        assert ann["area"] == _mask(*d).sum()
        assert set(ann) >= {"bbox", "score", "predicted_iou", "stability_score", "point_coords"}


def test_uncompressed_rle_accepted():
    m = _mask(*DISKS[0])
    flat = m.ravel(order="F")  # segment_anything's uncompressed RLE: column-major runs
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]]))
    counts = ([0] if flat[0] else []) + runs.tolist()  # runs start with background
    np.testing.assert_array_equal(decode_coco({"size": list(SHAPE), "counts": counts}), m)


def test_roi_zip_matches_disks(tmp_path):
    path = tmp_path / "rois.zip"
    path.write_bytes(roi_zip_bytes(_records(rle=True)))
    rois = roifile.roiread(path)
    assert [r.name for r in rois] == ["mask_0001", "mask_0002", "mask_0003"]
    for roi, (r, c, rad) in zip(rois, DISKS, strict=True):
        xy = roi.coordinates()
        dist = np.hypot(xy[:, 0] - (c + 0.5), xy[:, 1] - (r + 0.5))  # pixel centres at +0.5
        assert rad - 1 <= dist.min() and dist.max() <= rad + 0.5
        rr, cc = polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, SHAPE)
        filled = np.zeros(SHAPE, bool)
        filled[rr, cc] = True
        m = _mask(r, c, rad)
        assert (filled & m).sum() / (filled | m).sum() > 0.97


def test_contour_of_border_mask_is_closed():
    m = np.zeros((10, 10), bool)
    m[:4, :3] = True
    xy = mask_contour_xy(m)
    assert xy[:, 0].min() == pytest.approx(0.5 - 0.5) and xy[:, 1].max() == pytest.approx(4.0)
    assert mask_contour_xy(np.zeros((5, 5), bool)).shape == (0, 2)


def test_export_all_and_write(tmp_path):
    records = _records()
    image = np.zeros((*SHAPE, 2), np.uint16)
    image[..., 1] = 5
    params = {"recipe": 1, "provenance": provenance(image_name="x.tif", n_masks=3)}
    files = export_all(records, SHAPE, intensities=image, pixel_size_um=0.5, params=params)
    assert set(files) == set(EXPORTS)
    table = pd.read_csv(io.BytesIO(files["csv"]))
    assert table["id"].tolist() == [1, 2, 3]
    assert table["mean_intensity_c1"].tolist() == [5, 5, 5]
    assert table["area_um2"].tolist() == pytest.approx([r["area"] * 0.25 for r in records])
    written_params = json.loads(files["params"])
    assert written_params["recipe"] == 1
    assert written_params["provenance"]["versions"]["samlib"]
    assert written_params["provenance"]["image"] == {"name": "x.tif", "sha256": None}
    written = write_exports(tmp_path / "out", records, formats=["labels_tiff", "params"])
    assert sorted(p.name for p in written.values()) == ["labels.tif", "params.json"]
    np.testing.assert_array_equal(
        tifffile.imread(written["labels_tiff"]), labels_from_records(records)
    )
    empty = export_all([], SHAPE, formats=["labels_tiff", "coco"])
    assert tifffile.imread(io.BytesIO(empty["labels_tiff"])).max() == 0
    with pytest.raises(ParameterError, match="bogus"):
        export_all(records, formats=["bogus"])


@pytest.mark.parametrize("fmt", sorted(EXPORTS))
def test_each_format_is_written_under_its_one_name(tmp_path, fmt):
    written = write_exports(tmp_path, _records(), SHAPE, formats=[fmt])
    assert [p.name for p in written.values()] == [EXPORTS[fmt].file_name]
    assert written[fmt].stat().st_size > 0


def test_label_image_from_records_and_empty():
    records = _records(rle=True)
    labels = label_image(records, SHAPE)
    for i, d in enumerate(DISKS, start=1):
        assert labels[d[0], d[1]] == i
    assert label_image([], SHAPE).shape == SHAPE
    with pytest.raises(ParameterError):
        label_image([])
