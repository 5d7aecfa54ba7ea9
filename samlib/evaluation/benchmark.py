"""Score a SAM model against ground-truth instance labels: prompts and segment-everything.

Three figures on one image, each with a known, reproducible prompt:

- ``point_miou``: one positive point at each object's most interior pixel (maximum of the
  object's own distance transform); the multimask output with the highest predicted IoU;
- ``box_miou``: each object's tight box (XYXY, inclusive ends), single-mask output, kept
  inside the box as the app keeps it (:func:`samlib.prompts.prompting.clip_masks_to_box`);
  ``box_miou_unclipped`` is the decoder's mask as it is;
- segment-everything (the app's default generator parameters, then the area filter a
  user would set): ``ap50``, ``ap_mean`` (DSB2018 metric TP / (TP + FP + FN) averaged over
  IoU 0.5:0.05:0.95), ``f1`` at IoU 0.5, ``n_pred``, ``n_gt``.

With ``tiled=True`` the image is not shrunk to the model's input: prompts and
segment-everything run on windows of the model's input size at the image's own resolution
(:mod:`samlib.tiling.prompts`, :mod:`samlib.tiling.tiles`), as the app's tiling option does. That
suits models with a small input (the 256-pixel demo model) on images whose objects are
already at the scale the model knows.

Used by ``python -m samlib evaluate-model`` through :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi
from segment_anything import SamPredictor
from segment_anything.modeling import Sam

from samlib.errors import ParameterError
from samlib.evaluation.metrics import evaluate
from samlib.everything.generate import segment_everything
from samlib.image.display import to_rgb8
from samlib.image.io import read_image
from samlib.models.loading import default_model_name, load_model, suggested_params
from samlib.prompts.prompting import clip_masks_to_box
from samlib.tiling.prompts import TiledEmbeddings, predict_tiled
from samlib.tiling.tiles import segment_everything_tiled


def object_prompts(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per object of an HxW label image: ids (N,), interior points (N, 2) XY, boxes (N, 4) XYXY.

    The point is the maximum of the object's own distance transform (touching neighbours
    count as outside); the box is tight with inclusive ends, as SAM's ``batched_mask_to_box``.
    """
    ids, points, boxes = [], [], []
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        crop = np.pad(labels[sl] == i, 1)
        r, c = np.unravel_index(int(np.argmax(ndi.distance_transform_edt(crop))), crop.shape)
        ids.append(i)
        # XY = (col, row): the point is given to SAM as (x, y).
        points.append([c - 1 + sl[1].start, r - 1 + sl[0].start])
        boxes.append([sl[1].start, sl[0].start, sl[1].stop - 1, sl[0].stop - 1])
    return (
        np.asarray(ids, dtype=np.int64),
        np.asarray(points, dtype=np.float32).reshape(-1, 2),
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
    )


def grow_boxes(boxes: np.ndarray, margin: float, size: tuple[int, int]) -> np.ndarray:
    """XYXY ``boxes`` (N, 4) widened by ``margin`` px on every side, within an HxW image."""
    h, w = size
    out = boxes + np.array([-margin, -margin, margin, margin], dtype=np.float32)
    return np.clip(out, 0, [w - 1, h - 1, w - 1, h - 1]).astype(np.float32)


@torch.no_grad()
def prompt_ious(
    model: Sam, rgb8: np.ndarray, labels: np.ndarray, batch: int = 64, box_margin: float = 0.0
) -> dict[str, Any]:
    """Mean IoU for one interior point and for the box of every object (clipped or not).

    ``box_margin`` widens each tight box by that many pixels on every side, as a user's
    hand-drawn box would be.
    """
    predictor = SamPredictor(model)
    t0 = time.perf_counter()
    predictor.set_image(rgb8)
    encode_s = time.perf_counter() - t0
    ids, points, boxes = object_prompts(labels)
    boxes = grow_boxes(boxes, box_margin, labels.shape)
    pt_iou, box_iou, raw_iou = [], [], []
    tf, size, dev = predictor.transform, rgb8.shape[:2], predictor.device
    for s in range(0, len(ids), batch):
        sel = slice(s, s + batch)
        gt = labels[None] == ids[sel, None, None]
        pts = torch.as_tensor(tf.apply_coords(points[sel], size), device=dev)[:, None]
        lab = torch.ones(pts.shape[:2], device=dev)
        masks, scores, _ = predictor.predict_torch(pts, lab, multimask_output=True)
        best = masks[torch.arange(len(pts)), scores.argmax(1)].cpu().numpy()
        pt_iou.append(_iou(best, gt))
        bx = torch.as_tensor(tf.apply_boxes(boxes[sel], size), device=dev)
        masks, _, _ = predictor.predict_torch(None, None, boxes=bx, multimask_output=False)
        raw = masks[:, 0].cpu().numpy()
        raw_iou.append(_iou(raw, gt))
        clipped = np.stack([clip_masks_to_box(m, b) for m, b in zip(raw, boxes[sel], strict=True)])
        box_iou.append(_iou(clipped, gt))
    return {
        "point_miou": _mean(pt_iou),
        "box_miou": _mean(box_iou),
        "box_miou_unclipped": _mean(raw_iou),
        "encoder_seconds": encode_s,
    }


def _mean(batches: list[np.ndarray]) -> float:
    values = np.concatenate(batches) if batches else np.zeros(0)
    return float(values.mean()) if len(values) else 0.0


@torch.no_grad()
def tiled_prompt_ious(
    model: Sam,
    rgb8: np.ndarray,
    labels: np.ndarray,
    *,
    tile_size: int | None = None,
    halo: int | None = None,
    box_margin: float = 0.0,
) -> dict[str, Any]:
    """As :func:`prompt_ious`, each prompt on the native-resolution tile that suits it best."""

    tiled = TiledEmbeddings.build(model, rgb8, tile_size=tile_size, halo=halo)
    t0 = time.perf_counter()
    for i in range(len(tiled.tiles)):
        tiled.embedding(model, i)
    encode_s = time.perf_counter() - t0
    ids, points, boxes = object_prompts(labels)
    boxes = grow_boxes(boxes, box_margin, labels.shape)
    areas = np.bincount(labels.ravel(), minlength=int(labels.max()) + 1)
    pt_iou, box_iou, raw_iou = [], [], []
    for i, point, box in zip(ids, points, boxes, strict=True):
        res = predict_tiled(model, tiled, points=point[None], labels=[1], multimask=True)
        best = res.result.masks[0, int(np.argmax(res.scores))]
        pt_iou.append(window_iou(best, res.tile.window, labels, i, areas[i]))
        res = predict_tiled(model, tiled, box=box, multimask=False)
        window = res.tile.window
        raw = res.result.masks[0, 0]
        raw_iou.append(window_iou(raw, window, labels, i, areas[i]))
        in_window = box - np.tile(np.asarray(window[:2], dtype=box.dtype), 2)
        clipped = clip_masks_to_box(raw, in_window)
        box_iou.append(window_iou(clipped, window, labels, i, areas[i]))
    return {
        "point_miou": float(np.mean(pt_iou)) if pt_iou else 0.0,
        "box_miou": float(np.mean(box_iou)) if box_iou else 0.0,
        "box_miou_unclipped": float(np.mean(raw_iou)) if raw_iou else 0.0,
        "encoder_seconds": encode_s,
        "tiles": len(tiled.tiles),
    }


def window_iou(
    mask: np.ndarray, window: tuple[int, int, int, int], labels: np.ndarray, i: int, gt_area: int
) -> float:
    """IoU of a mask in the frame of ``window`` (XYXY) with object ``i`` of ``labels``."""
    x0, y0, x1, y1 = window
    inter = int((mask & (labels[y0:y1, x0:x1] == i)).sum())
    return inter / max(int(mask.sum()) + int(gt_area) - inter, 1)


def _iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    inter = (pred & gt).sum((1, 2))
    union = (pred | gt).sum((1, 2))
    return inter / np.maximum(union, 1)


def evaluate_model(
    model: Sam,
    rgb8: np.ndarray,
    labels: np.ndarray,
    *,
    min_area: int | None = None,
    max_area: int | None = None,
    tiled: bool = False,
    tile_size: int | None = None,
    halo: int | None = None,
    box_margin: float = 0.0,
    **generator_params: Any,
) -> dict[str, Any]:
    """All figures for one HWC uint8 image and its HxW instance labels (see module doc).

    ``min_area`` / ``max_area`` (pixels, inclusive) filter the everything masks before
    matching, as the app's area filter does; ``generator_params`` go to the generator.
    ``tiled`` runs everything on native-resolution tiles (``tile_size`` and ``halo`` as
    :func:`samlib.tiling.tiles.segment_everything_tiled`; defaults: windows of the input size).
    ``box_margin`` widens the box prompts (see :func:`prompt_ious`).
    """
    labels = np.asarray(labels)
    if labels.shape != rgb8.shape[:2] or not np.issubdtype(labels.dtype, np.integer):
        raise ParameterError(
            f"labels must be an integer image of the image's size {rgb8.shape[:2]}, got "
            f"{labels.dtype} {labels.shape}"
        )
    if not np.isfinite(box_margin) or box_margin < 0:
        raise ParameterError(f"box_margin must be 0 or more pixels, got {box_margin}")
    if tiled:
        out: dict[str, Any] = tiled_prompt_ious(
            model, rgb8, labels, tile_size=tile_size, halo=halo, box_margin=box_margin
        )
        t0 = time.perf_counter()
        records = segment_everything_tiled(
            model, rgb8, tile_size=tile_size, halo=halo, **generator_params
        )
    else:
        out = prompt_ious(model, rgb8, labels, box_margin=box_margin)
        t0 = time.perf_counter()
        records = segment_everything(model, rgb8, **generator_params)
    out["everything_seconds"] = time.perf_counter() - t0
    keep = [
        r
        for r in records
        if (min_area is None or r["area"] >= min_area)
        and (max_area is None or r["area"] <= max_area)
    ]
    ev = evaluate(keep, labels)
    table = ev.per_threshold.set_index("threshold")
    out.update({"ap50": float(table.loc[0.5, "ap"]), "ap_mean": ev.average_precision})
    out.update({"f1": float(table.loc[0.5, "f1"]), "n_pred": ev.n_pred, "n_gt": ev.n_gt})
    out["n_pred_unfiltered"] = len(records)
    out["tiled"] = tiled
    out["box_margin"] = box_margin
    out.update({"min_area": min_area, "max_area": max_area})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``evaluate-model IMAGE GT_LABELS --model NAME|PATH [--min-area A --max-area B]``.

    Errors propagate: ``samlib evaluate-model`` (:func:`samlib.cli.parser.main`) shows them
    in one line.
    """
    ap = argparse.ArgumentParser(
        prog="python -m samlib evaluate-model", description=__doc__.split("\n")[0]
    )
    ap.add_argument("image")
    ap.add_argument("gt_labels")
    ap.add_argument("--model", default=None, help="registry name or checkpoint path")
    ap.add_argument("--min-area", type=int, default=None)
    ap.add_argument("--max-area", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument(
        "--tiled",
        action="store_true",
        help="run on tiles at the image's own resolution instead of shrinking it to the "
        "model's input",
    )
    ap.add_argument("--tile-size", type=int, default=None, help="tile core side (with --tiled)")
    ap.add_argument("--halo", type=int, default=None, help="tile overlap (with --tiled)")
    ap.add_argument("--fast", action="store_true", help="segment everything in fast mode")
    ap.add_argument(
        "--box-margin",
        type=float,
        default=0.0,
        metavar="PX",
        help="widen each object's tight box by PX pixels on every side (a hand-drawn box)",
    )
    ap.add_argument(
        "--sam-thresholds",
        action="store_true",
        help="use SAM's default thresholds even where the registry suggests others for this model",
    )
    args = ap.parse_args(argv)
    if not args.tiled and (args.tile_size is not None or args.halo is not None):
        raise ParameterError("--tile-size and --halo need --tiled")
    name = args.model or default_model_name()
    model = load_model(name, device=args.device)
    rgb8 = to_rgb8(read_image(args.image))
    gt = read_image(args.gt_labels).data[0, :, :, 0]
    params = {} if args.sam_thresholds else suggested_params(name)
    if args.fast:
        params = {**params, "fast": True}
    result = {
        "model": name,
        "generator_params": params or "SAM defaults",
        **evaluate_model(
            model,
            rgb8,
            gt,
            min_area=args.min_area,
            max_area=args.max_area,
            tiled=args.tiled,
            tile_size=args.tile_size,
            halo=args.halo,
            box_margin=args.box_margin,
            **params,
        ),
    }
    print(json.dumps(result, indent=2))
    return 0
