"""Choose a model's mask threshold and segment-everything thresholds on synthetic images.

First the mask logit threshold (SAM: 0.0): the grid value with the best mean of the point
and box prompt mIoU (``samlib.benchmark_model.prompt_ious``) on the validation images; a
model that draws its masks too large does better above 0. Then the segment-everything
thresholds, with that mask threshold: SAM's defaults (pred_iou_thresh 0.88,
stability_score_thresh 0.95) suit SAM's own score ranges; a smaller model predicts lower
IoUs and softer masks, so with those defaults it keeps no mask at all. The candidates of the
same synthetic images (from ``samlib.synth``, seeds disjoint from training; never the
DSB2018 image) are decoded once and re-filtered over a grid of the two thresholds; the pair
with the best mean AP@0.5 wins. The chosen values go into the model's registry entry
(``mask_threshold`` and ``suggested_params``).

    .venv/bin/python scripts/calibrate_thresholds.py --model small_cnn
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from samlib.benchmark_model import prompt_ious  # noqa: E402
from samlib.display import to_rgb8  # noqa: E402
from samlib.evaluate import evaluate  # noqa: E402
from samlib.everything import GeneratorParams, generate_candidates, refilter  # noqa: E402
from samlib.models import load_model  # noqa: E402
from samlib.synth import synth_image  # noqa: E402

MASK_GRID = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)
IOU_GRID = np.round(np.arange(0.30, 0.91, 0.05), 2)
STABILITY_GRID = np.round(np.arange(0.50, 0.96, 0.05), 2)


def ap50(records: list[dict], labels: np.ndarray) -> float:
    """AP at IoU 0.5 of a record list against an instance label image."""
    ev = evaluate([r["segmentation"] for r in records], labels)
    return float(ev.per_threshold.set_index("threshold").loc[0.5, "ap"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--seed", type=int, default=7_000_000)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--radius", type=float, nargs=2, default=(5.0, 16.0))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    floor = dict(iou_floor=float(IOU_GRID[0]), stability_floor=float(STABILITY_GRID[0]))
    images = [
        synth_image(
            args.seed + i, (args.size, args.size), kind="fluorescence", radius=tuple(args.radius)
        )
        for i in range(args.images)
    ]
    prompt_table = {}
    for t in MASK_GRID:
        model.mask_threshold = t
        res = [prompt_ious(model, to_rgb8(img), lab) for img, lab in images]
        point = float(np.mean([r["point_miou"] for r in res]))
        box = float(np.mean([r["box_miou"] for r in res]))
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
    for it, st in itertools.product(IOU_GRID, STABILITY_GRID):
        scores = [
            ap50(refilter(c, pred_iou_thresh=float(it), stability_score_thresh=float(st)), lab)
            for c, lab in data
        ]
        table[(float(it), float(st))] = float(np.mean(scores))
    (best_iou, best_stab), best = max(table.items(), key=lambda kv: kv[1])
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
                },
                "synthetic_ap50": round(best, 4),
                "synthetic_ap50_at_sam_defaults": round(float(default), 4),
                "data": {
                    "generator": "samlib.synth.synth_image",
                    "kind": "fluorescence",
                    "seeds": [args.seed, args.seed + args.images - 1],
                    "size": args.size,
                    "radius": list(args.radius),
                },
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
