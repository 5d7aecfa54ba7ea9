"""What a result is saved as.

Label images, COCO RLE, CSV measurements, ImageJ ROIs, overlays, and the provenance that
goes into ``params.json`` beside the recipe. :data:`EXPORTS` names every file.

May import: samlib.errors, samlib.files, samlib.coords, samlib.records, samlib.image.
"""

from __future__ import annotations

from samlib.outputs.export import (
    EXPORTS,
    ExportFormat,
    coco_dict,
    export_all,
    export_makers,
    label_image,
    label_png_bytes,
    label_tiff_bytes,
    mask_pngs_zip_bytes,
    roi_zip_bytes,
    write_exports,
)
from samlib.outputs.measure import measure_labels, measure_masks, measure_records
from samlib.outputs.provenance import provenance
from samlib.outputs.roi import mask_contour_xy

__all__ = [
    "EXPORTS",
    "ExportFormat",
    "coco_dict",
    "export_all",
    "export_makers",
    "label_image",
    "label_png_bytes",
    "label_tiff_bytes",
    "mask_pngs_zip_bytes",
    "provenance",
    "roi_zip_bytes",
    "write_exports",
    "measure_labels",
    "measure_masks",
    "measure_records",
    "mask_contour_xy",
]
