"""Tables, provenance and downloadable files for a set of mask records shown in the app."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from samlib.app.session import WorkImage


def record_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The workshop's record keys as table rows (the segmentation summarised by its size)."""
    from samlib.records.masks import record_shape

    rows = []
    for i, r in enumerate(records, start=1):
        h, w = record_shape(r)
        rows.append(
            {
                "id": i,
                "segmentation": f"{h}x{w} mask",
                "area": int(r["area"]),
                "bbox": [round(float(v), 1) for v in r["bbox"]],
                "predicted_iou": round(float(r["predicted_iou"]), 4),
                "point_coords": [[round(float(v), 1) for v in p] for p in r["point_coords"]],
                "stability_score": round(float(r["stability_score"]), 4),
                "crop_box": [int(v) for v in r["crop_box"]],
            }
        )
    return rows


def provenance(
    work: WorkImage, model, *, source: str, params: dict[str, Any], n_masks: int
) -> dict[str, Any]:
    """Everything that produced a set of masks: image, display settings, model, parameters."""
    from samlib.outputs.export import provenance as export_provenance

    info = getattr(model, "samlib_info", None)
    return export_provenance(
        params,
        model_name=getattr(info, "name", None),
        model_sha256=getattr(info, "sha256", None),
        image_name=work.name,
        image_sha256=work.image.hash,
        extra={
            "source": source,
            "display": work.settings.as_dict(),
            "pixel_size_um": work.pixel_size_um,
            "n_masks": int(n_masks),
            "overlap_rule": "area (larger masks painted first)",
        },
    )


#: Download name suffix and MIME type of each export, in the order the UI offers them.
EXPORTS = {
    "labels_tiff": ("labels.tif", "image/tiff"),
    "labels_png": ("labels.png", "image/png"),
    "csv": ("measurements.csv", "text/csv"),
    "coco": ("masks_coco.json", "application/json"),
    "masks_zip": ("masks_png.zip", "application/zip"),
    "rois": ("rois_imagej.zip", "application/zip"),
    "params": ("params.json", "application/json"),
}


def export_makers(
    work: WorkImage, records: Sequence[dict[str, Any]], prov: dict[str, Any]
) -> dict[str, Callable[[], bytes]]:
    """One zero-argument function per export format (keys of :data:`EXPORTS`).

    Each builds its file only when called, so a page can offer every format without
    paying for the ones nobody downloads. Label images paint larger masks first (see
    :func:`samlib.records.masks.paint_order`), so small masks on large ones stay visible.
    """
    from samlib.outputs import export, measure
    from samlib.records.masks import labels_from_records

    shape = work.rgb8.shape[:2]

    def labels() -> np.ndarray:
        return labels_from_records(records, shape=shape)

    def table():
        return measure.measure_records(
            records, work.image, plane=work.settings.plane, pixel_size_um=work.pixel_size_um
        )

    return {
        "labels_tiff": lambda: export.label_tiff_bytes(labels(), pixel_size_um=work.pixel_size_um),
        "labels_png": lambda: export.label_png_bytes(labels()),
        "csv": lambda: export.csv_bytes(table()),
        "coco": lambda: export.coco_json_bytes(records, image_name=work.name, image_size=shape),
        "masks_zip": lambda: export.mask_pngs_zip_bytes(records),
        "rois": lambda: export.roi_zip_bytes(records),
        "params": lambda: json.dumps(prov, indent=2).encode(),
    }
