"""Compare shrinking an image to the model's input with segmenting it on native-resolution tiles.

On synthetic 512 x 512 fluorescence nuclei images (``samlib.datasets.synth.synth_image``; every
other one with out-of-focus glow, ``samlib.datasets.synth.add_glow``) whose nuclei are 6-15 px in
radius at the image's own pixels, the sizes the demo model was trained on both at full and
at half resolution. ``samlib.evaluation.benchmark.evaluate_model`` scores each image both ways
with the model's suggested thresholds; seeds 9,100,000 on are disjoint from training.

    .venv/bin/python scripts/compare_tiling.py --tile-size 256 --halo 16 --fast
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from samlib.datasets.synth import add_glow, synth_image
from samlib.evaluation.benchmark import evaluate_model
from samlib.image.display import to_rgb8
from samlib.models.loading import load_model, suggested_params

FIGURES = ("point_miou", "box_miou", "ap50", "ap_mean", "everything_seconds")


def nuclei_field(seed: int, side: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Nuclei of radius 6-7.5 px up to 1.25-2 times that, covering 10-40 % of the image."""
    rng = np.random.default_rng([seed, 7])
    lo = rng.uniform(6.0, 7.5)
    hi = lo * rng.uniform(1.25, 2.0)
    n = int(rng.uniform(0.1, 0.4) * side * side / (np.pi * lo * hi))
    img, labels = synth_image(
        seed, (side, side), kind="fluorescence", n_objects=n, radius=(lo, hi), min_axis_ratio=0.3
    )
    if seed % 2:
        img = add_glow(np.random.default_rng([seed, 2]), img, lo)
    return img, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--tile-size", type=int, default=None)
    ap.add_argument("--halo", type=int, default=None)
    ap.add_argument("--fast", action="store_true", help="fast mode in the tiled run")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    params = suggested_params(args.model) or {}
    rows = {"resized": [], "tiled": []}
    for seed in range(9_100_000, 9_100_000 + args.images):
        img, labels = nuclei_field(seed)
        rgb8 = to_rgb8(img)
        plain = evaluate_model(model, rgb8, labels, **params)
        tiled = evaluate_model(
            model,
            rgb8,
            labels,
            tiled=True,
            tile_size=args.tile_size,
            halo=args.halo,
            **{**params, "fast": args.fast},
        )
        for name, res in (("resized", plain), ("tiled", tiled)):
            rows[name].append([res[k] for k in FIGURES])
        print(seed, *({k: round(r[k], 3) for k in FIGURES} for r in (plain, tiled)), flush=True)
    means = {
        name: dict(zip(FIGURES, np.mean(r, axis=0).round(3).tolist(), strict=True))
        for name, r in rows.items()
    }
    print(json.dumps(means, indent=2))


if __name__ == "__main__":
    main()
