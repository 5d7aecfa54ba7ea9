"""Compare two checkpoints of the demo model on fresh synthetic nuclei: the keep rule of a stage.

Scores both models with one interior point and the tight box per nucleus
(``samlib.evaluation.benchmark.prompt_ious``) on the same images of each kind of
``samlib.datasets.synth.nuclei_image`` and prints, per kind, the mean of point and box mIoU for each
model. Both use one mask threshold, so the comparison is of the weights alone; the box
figure is the decoder's mask as it is, with ``box_clipped`` (kept inside its box, as the app
does) beside it. The seeds (9,400,000 on by default) are disjoint from every training and
validation seed.

    .venv/bin/python scripts/compare_stages.py OLD.pt NEW.pt --threads 2
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from samlib.datasets.synth import nuclei_image
from samlib.evaluation.benchmark import prompt_ious
from samlib.models.loading import load_model
from samlib.training.prompts import to_model_rgb8

KINDS = {
    "plain": {},
    "glow_defocus": {"glow": True, "defocus": True, "min_axis_ratio": 0.3},
    "touching_glow_defocus": {
        "touching": True,
        "glow": True,
        "defocus": True,
        "min_axis_ratio": 0.3,
    },
}


def score(model, seeds: range, options: dict) -> dict[str, float]:
    """Mean point and box mIoU over the images of ``seeds``, and the keep rule's mean.

    ``mean`` is (point + box as the decoder gives it) / 2, the figure every stage was kept
    on; ``box_clipped`` keeps each box's mask inside the box, as the app does.
    """
    pairs = (nuclei_image(seed, **options) for seed in seeds)
    runs = [prompt_ious(model, to_model_rgb8(img), lab) for img, lab in pairs]
    point = float(np.mean([r["point_miou"] for r in runs]))
    box = float(np.mean([r["box_miou_unclipped"] for r in runs]))
    clipped = float(np.mean([r["box_miou"] for r in runs]))
    return {
        "point": round(point, 4),
        "box": round(box, 4),
        "box_clipped": round(clipped, 4),
        "mean": round((point + box) / 2, 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old", help="checkpoint or registered name")
    ap.add_argument("new", help="checkpoint or registered name")
    ap.add_argument("--images", type=int, default=16, help="images of each kind")
    ap.add_argument("--seed", type=int, default=9_400_000)
    ap.add_argument("--mask-threshold", type=float, default=-2.0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = range(args.seed, args.seed + args.images)
    out: dict[str, dict] = {}
    for name, path in (("old", args.old), ("new", args.new)):
        model = load_model(path, device="cpu")
        model.mask_threshold = args.mask_threshold
        out[name] = {kind: score(model, seeds, options) for kind, options in KINDS.items()}
    out["seeds"] = [seeds.start, seeds.stop - 1]
    out["mask_threshold"] = args.mask_threshold
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
