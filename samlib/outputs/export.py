"""Exports of mask records: label image, per-mask PNGs, COCO RLE, CSV, ImageJ ROIs, recipe.

:data:`EXPORTS` names each format's file, the same in the app's downloads and the command
line's output. Every ``*_bytes`` function returns a file's content (for a download
button); :func:`export_makers` builds them on demand and :func:`write_exports` writes them
to a folder. Overlaps in label images are resolved
by :func:`samlib.records.masks.paint_order`: by default larger masks are painted first, so a
smaller mask lying on a larger one stays visible.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tifffile
from PIL import Image

from samlib.errors import ParameterError
from samlib.files import write_atomic
from samlib.image.microscopy import MicroscopyImage, as_image
from samlib.outputs.measure import measure_records
from samlib.outputs.provenance import now
from samlib.outputs.roi import roi_zip_bytes
from samlib.records.masks import labels_from_records, masks_of, record_shape
from samlib.records.rle import encode_coco

__all__ = [
    "coco_json_bytes",
    "csv_bytes",
    "label_image",
    "label_png_bytes",
    "label_tiff_bytes",
    "mask_pngs_zip_bytes",
    "roi_zip_bytes",
    "EXPORTS",
    "ExportFormat",
    "check_formats",
    "export_all",
    "export_makers",
    "write_exports",
]

Record = Mapping[str, Any]


def label_image(
    records: Sequence[Record], image_size: tuple[int, int] | None = None, *, rule: str = "area"
) -> np.ndarray:
    """Paint records into an ``(H, W)`` label image; record ``i`` gets label ``i + 1``.

    Overlaps follow ``rule`` (see :func:`samlib.records.masks.paint_order`): ``"area"`` (default)
    paints larger masks first so smaller ones stay visible; ``"score"`` lets the higher
    ``predicted_iou`` win; ``"input"`` lets later records win.
    """
    return labels_from_records(records, rule=rule, shape=image_size)


def label_tiff_bytes(labels: np.ndarray, *, pixel_size_um: float | None = None) -> bytes:
    """Encode an ``(H, W)`` label image as TIFF (uint16, or uint32 beyond 65535 labels).

    A uint16 image is written ImageJ-compatible, with the pixel size (µm/px) when given.
    """
    labels = _check_labels(labels)
    buf = io.BytesIO()
    if labels.max(initial=0) <= np.iinfo(np.uint16).max:
        kwargs: dict[str, Any] = {"imagej": True, "metadata": {"axes": "YX"}}
        if pixel_size_um is not None:
            kwargs["resolution"] = (1.0 / pixel_size_um, 1.0 / pixel_size_um)
            kwargs["metadata"]["unit"] = "um"
        tifffile.imwrite(buf, labels.astype(np.uint16), compression="zlib", **kwargs)
    else:
        tifffile.imwrite(
            buf, labels.astype(np.uint32), compression="zlib", photometric="minisblack"
        )
    return buf.getvalue()


def label_png_bytes(labels: np.ndarray) -> bytes:
    """Encode an ``(H, W)`` label image as a 16-bit grayscale PNG (at most 65535 labels)."""
    labels = _check_labels(labels)
    if labels.max(initial=0) > np.iinfo(np.uint16).max:
        raise ParameterError(f"a PNG holds labels up to 65535, got {labels.max()}; use TIFF")
    buf = io.BytesIO()
    Image.fromarray(labels.astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "ui" or (labels.size and labels.min() < 0):
        raise ParameterError(
            f"a label image must be 2-D non-negative integers, got {labels.dtype} {labels.shape}"
        )
    return labels


def mask_pngs_zip_bytes(records: Sequence[Record] | Sequence[np.ndarray]) -> bytes:
    """Zip one full-size 1-bit PNG per mask (``mask_0001.png`` onwards, numbered like the
    label image); Fiji opens them as binary 0/255 images, Pillow as bool arrays."""
    buf = io.BytesIO()
    # PNGs are already compressed: store them (deflating again costs time, saves nothing).
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i, mask in enumerate(masks_of(records), start=1):
            png = io.BytesIO()
            Image.fromarray(mask).save(png, format="PNG")  # bool -> 1-bit PNG
            zf.writestr(f"mask_{i:04d}.png", png.getvalue())
    return buf.getvalue()


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def coco_dict(
    records: Sequence[Record],
    *,
    image_name: str = "image",
    image_size: tuple[int, int] | None = None,
    category: str = "object",
) -> dict[str, Any]:
    """Return records as a COCO instance-segmentation dict with RLE segmentations.

    One image (id 1), one category (id 1); annotation ``id`` ``i + 1`` is record ``i``
    (the label value in the label image). Each annotation keeps the records' keys
    ``predicted_iou``, ``stability_score``, ``point_coords`` and ``crop_box``; ``score`` is
    ``predicted_iou``. ``bbox`` is XYWH as in the records.
    """
    if image_size is None:
        if not records:
            raise ParameterError("no records and no image_size: cannot size the COCO image")
        image_size = record_shape(records[0])
    h, w = image_size
    annotations = []
    for i, r in enumerate(records, start=1):
        seg = r["segmentation"]
        rle = dict(seg) if isinstance(seg, Mapping) else encode_coco(np.asarray(seg))
        if isinstance(rle.get("counts"), bytes):
            rle["counts"] = rle["counts"].decode("ascii")
        elif isinstance(rle.get("counts"), list):  # uncompressed RLE: compress it
            rle = encode_coco(masks_of([r])[0])
        ann = {
            "id": i,
            "image_id": 1,
            "category_id": 1,
            "segmentation": rle,
            "area": int(r["area"]) if "area" in r else int(masks_of([r])[0].sum()),
            "bbox": [float(v) for v in r.get("bbox", [])],
            "iscrowd": 0,
        }
        for key in ("predicted_iou", "stability_score", "point_coords", "crop_box"):
            if key in r:
                ann[key] = _jsonable(r[key])
        if "predicted_iou" in r:
            ann["score"] = float(r["predicted_iou"])
        annotations.append(ann)
    return {
        "info": {"description": "Segment Anything masks", "date_created": now()},
        "images": [{"id": 1, "file_name": image_name, "height": int(h), "width": int(w)}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": category}],
    }


def coco_json_bytes(records: Sequence[Record], **kwargs: Any) -> bytes:
    """:func:`coco_dict` as UTF-8 JSON bytes."""
    return json.dumps(coco_dict(records, **kwargs), indent=1).encode()


def csv_bytes(table: pd.DataFrame) -> bytes:
    """A measurement table (``samlib.outputs.measure``) as UTF-8 CSV without the index."""
    return table.to_csv(index=False).encode()


@dataclass(frozen=True)
class ExportFormat:
    """One export: its file name (the same in app downloads and CLI output), MIME type,
    and what it holds."""

    file_name: str
    mime: str
    what: str


#: Every export, in the order the app offers them; keys are the format names.
EXPORTS: dict[str, ExportFormat] = {
    "labels_tiff": ExportFormat("labels.tif", "image/tiff", "label image (TIFF, pixel size)"),
    "labels_png": ExportFormat("labels.png", "image/png", "label image (16-bit PNG)"),
    "csv": ExportFormat("measurements.csv", "text/csv", "measurements per mask (CSV)"),
    "coco": ExportFormat("masks_coco.json", "application/json", "COCO RLE masks and scores"),
    "masks_zip": ExportFormat("masks_png.zip", "application/zip", "one PNG per mask"),
    "rois": ExportFormat("rois_imagej.zip", "application/zip", "ImageJ / Fiji ROIs"),
    "params": ExportFormat("params.json", "application/json", "the recipe and provenance"),
}


def export_makers(
    records: Sequence[Record],
    image_size: tuple[int, int] | None = None,
    *,
    intensities: MicroscopyImage | np.ndarray | None = None,
    plane: int | str = 0,
    pixel_size_um: float | None = None,
    params: Mapping[str, Any] | None = None,
    image_name: str = "image",
    overlap_rule: str = "area",
    table: pd.DataFrame | None = None,
) -> dict[str, Callable[[], bytes]]:
    """One zero-argument function per export format (keys of :data:`EXPORTS`).

    Each builds its file only when called, so the app can offer every format without
    paying for the ones nobody downloads.

    Parameters
    ----------
    records : sequence of mask records
        Bool or RLE segmentations; record ``i`` is label ``i + 1`` everywhere.
    image_size : (H, W), optional
        Needed when there are no records.
    intensities : MicroscopyImage or ndarray, optional
        Original data for the CSV's intensity columns: an image (its ``plane`` is used) or
        an ``(H, W)`` / ``(H, W, C)`` array.
    params : mapping, optional
        The content of ``params.json``: a recipe with its provenance
        (:meth:`samlib.recipe.Recipe.to_dict`).
    overlap_rule : str
        How overlapping masks are painted into label images
        (:func:`samlib.records.masks.paint_order`).
    table : DataFrame, optional
        The records' measurement table, when already made (else measured on demand).
    """
    if image_size is None and not records:
        raise ParameterError("no records and no image_size: cannot size the label image")
    size = tuple(image_size) if image_size is not None else record_shape(records[0])
    if isinstance(intensities, np.ndarray):
        intensities = as_image(intensities, "YX" if intensities.ndim == 2 else "YXC")

    def labels() -> np.ndarray:
        return labels_from_records(records, rule=overlap_rule, shape=size)

    def measurements() -> pd.DataFrame:
        if table is not None:
            return table
        return measure_records(records, intensities, plane=plane, pixel_size_um=pixel_size_um)

    return {
        "labels_tiff": lambda: label_tiff_bytes(labels(), pixel_size_um=pixel_size_um),
        "labels_png": lambda: label_png_bytes(labels()),
        "csv": lambda: csv_bytes(measurements()),
        "coco": lambda: coco_json_bytes(records, image_name=image_name, image_size=size),
        "masks_zip": lambda: mask_pngs_zip_bytes(records),
        "rois": lambda: roi_zip_bytes(records),
        "params": lambda: json.dumps(_jsonable(dict(params or {})), indent=2).encode(),
    }


def check_formats(formats: Sequence[str]) -> None:
    """Raise :class:`~samlib.errors.ParameterError` for names that are not in :data:`EXPORTS`."""
    unknown = [f for f in formats if f not in EXPORTS]
    if unknown:
        raise ParameterError(f"unknown export formats {unknown}; known: {list(EXPORTS)}")


def export_all(
    records: Sequence[Record],
    image_size: tuple[int, int] | None = None,
    *,
    formats: Sequence[str] = tuple(EXPORTS),
    **kwargs: Any,
) -> dict[str, bytes]:
    """Build the files of ``formats`` (keys of :data:`EXPORTS`) in memory, by format.

    ``kwargs`` are those of :func:`export_makers`.
    """
    check_formats(formats)
    makers = export_makers(records, image_size, **kwargs)
    return {f: makers[f]() for f in formats}


def write_exports(
    folder: str | os.PathLike,
    records: Sequence[Record],
    image_size: tuple[int, int] | None = None,
    *,
    formats: Sequence[str] = tuple(EXPORTS),
    **kwargs: Any,
) -> dict[str, Path]:
    """Write the files of ``formats`` into ``folder`` (created if needed) under their
    :data:`EXPORTS` names; return the paths by format.

    Each file is written under a temporary name and renamed into place, so an interrupted
    run never leaves a half-written file under an export's name.
    """
    files = export_all(records, image_size, formats=formats, **kwargs)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for fmt, content in files.items():
        path = folder / EXPORTS[fmt].file_name
        write_atomic(path, content)
        written[fmt] = path
    return written
