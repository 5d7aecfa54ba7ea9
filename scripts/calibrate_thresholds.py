"""Choose a model's mask threshold and segment-everything thresholds on synthetic images.

First the mask logit threshold (SAM: 0.0): the grid value with the best mean of the point
and box prompt mIoU (``samlib.evaluation.benchmark.prompt_ious``) on the validation images; a
model whose masks come out too large or too small does better away from 0. Then the
segment-everything thresholds, with that mask threshold: SAM's defaults (pred_iou_thresh
0.88, stability_score_thresh 0.95) suit SAM's own score ranges, not necessarily a smaller
model's. The candidates of the same synthetic images (``samlib.datasets.synth.nuclei_image``, the
demo model's training distribution, with seeds disjoint from training and validation; never
the DSB2018 image) are decoded once and re-filtered over a grid of the two thresholds, the
box NMS threshold (nuclei do not overlap much, so a lower one can remove duplicates) and
``min_mask_region_area`` (stray specks around a mask widen its box, so box NMS misses
duplicates unless they are removed); the combination with the best mean AP@0.5 wins. The
chosen values go into the model's registry entry (``mask_threshold`` and
``suggested_params``).

    .venv/bin/python scripts/calibrate_thresholds.py --model small_cnn

``--glow`` / ``--defocus`` / ``--touching`` / ``--min-axis-ratio`` draw the images as a training
stage with those options did.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys

import numpy as np
import torch

from samlib.datasets.synth import nuclei_image
from samlib.evaluation.benchmark import prompt_ious
from samlib.evaluation.metrics import evaluate
from samlib.everything.generate import GeneratorParams, generate_candidates, refilter
from samlib.image.display import to_rgb8
from samlib.models.loading import load_model

from nuclei_options import add_nuclei_options, nuclei_options

MASK_GRID = (-4.0, -3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)
IOU_GRID = np.round(np.arange(0.30, 0.91, 0.05), 2)
STABILITY_GRID = np.round(np.arange(0.50, 0.96, 0.05), 2)
NMS_GRID = (0.5, 0.6, 0.7)
REGION_GRID = (0, 32, 64, 128, 256)


def ap50(records: list[dict], labels: np.ndarray) -> float:
    """AP at IoU 0.5 of a record list against an instance label image."""
    ev = evaluate([r["segmentation"] for r in records], labels)
    return float(ev.per_threshold.set_index("threshold").loc[0.5, "ap"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--seed", type=int, default=7_000_000)
    ap.add_argument("--threads", type=int, default=1)
    add_nuclei_options(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    floor = dict(iou_floor=float(IOU_GRID[0]), stability_floor=float(STABILITY_GRID[0]))
    options = nuclei_options(args)
    images = [nuclei_image(args.seed + i, **options) for i in range(args.images)]
    prompt_table = {}
    for t in MASK_GRID:
        model.mask_threshold = t
        res = [prompt_ious(model, to_rgb8(img), lab) for img, lab in images]
        point = float(np.mean([r["point_miou"] for r in res]))
        # The decoder's own masks: the threshold is a property of its logits.
        box = float(np.mean([r["box_miou_unclipped"] for r in res]))
        prompt_table[t] = (point, box)
        print(f"mask threshold {t:+.1f}: point mIoU {point:.4f}, box {box:.4f}", file=sys.stderr)
    mask_t = max(prompt_table, key=lambda t: sum(prompt_table[t]))
    model.mask_threshold = mask_t
    data = []
    for i, (img, lab) in enumerate(images):
        cands = generate_candidates(model, to_rgb8(img), GeneratorParams(), **floor)
        data.append((cands, lab))
        print(f"image {i + 1}/{args.images}: {len(cands)} candidates", file=sys.stderr)
    table = {}
    for it, st, nms, area in itertools.product(IOU_GRID, STABILITY_GRID, NMS_GRID, REGION_GRID):
        chosen = dict(
            pred_iou_thresh=float(it),
            stability_score_thresh=float(st),
            box_nms_thresh=nms,
            min_mask_region_area=area,
        )
        table[(float(it), float(st), nms, area)] = float(
            np.mean([ap50(refilter(c, **chosen), lab) for c, lab in data])
        )
    (best_iou, best_stab, best_nms, best_area), best = max(table.items(), key=lambda kv: kv[1])
    sam = GeneratorParams()
    default = np.mean(
        [
            ap50(
                refilter(
                    c,
                    pred_iou_thresh=sam.pred_iou_thresh,
                    stability_score_thresh=sam.stability_score_thresh,
                ),
                lab,
            )
            for c, lab in data
        ]
    )
    print(
        json.dumps(
            {
                "model": args.model,
                "mask_threshold": mask_t,
                "synthetic_prompt_miou": {
                    "point": round(prompt_table[mask_t][0], 4),
                    "box": round(prompt_table[mask_t][1], 4),
                    "point_at_0": round(prompt_table[0.0][0], 4),
                    "box_at_0": round(prompt_table[0.0][1], 4),
                },
                "suggested_params": {
                    "pred_iou_thresh": best_iou,
                    "stability_score_thresh": best_stab,
                    "box_nms_thresh": best_nms,
                    "min_mask_region_area": best_area,
                },
                "synthetic_ap50": round(best, 4),
                "synthetic_ap50_at_sam_defaults": round(float(default), 4),
                "data": {
                    "generator": "samlib.datasets.synth.nuclei_image",
                    "seeds": [args.seed, args.seed + args.images - 1],
                    **options,
                },
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
