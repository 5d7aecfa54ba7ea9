"""Peak memory and time of tiled segment-everything on a large image.

Builds a random-weight model (``tiny``: VIT_TINY, or ``vit_b``), paints a synthetic
image of coloured disks (default 4096 x 4096), runs
:func:`samlib.tiling.tiles.segment_everything_tiled` with low thresholds (so that many masks
survive and reach the stitching step) and prints the peak resident memory of the process
(``resource.getrusage``), the peak of Python/NumPy allocations during the run
(``tracemalloc``; torch's own buffers are not traced) and, for comparison, the memory a
full-resolution boolean mask per record would take.

Usage::

    python benchmarks/tiling_memory.py --model vit_b --size 4096 --points-per-side 4

Measured on a shared 2-core CPU, 1 torch thread, 4096 x 4096 image, 4 x 4 points per tile:

- vit_b (random weights), 36 tiles of 768 + 2 x 128 halo: peak RSS 3745 MB (1091 MB
  after loading the model and image), 50 s per tile;
- tiny (VIT_TINY), 484 tiles of 192 + 2 x 32 halo: peak RSS 834 MB (734 MB before),
  0.21 s per tile.

Random weights give few, large masks; how memory grows with many masks is covered by
``tests/test_tiling.py::test_stitch_memory_does_not_hold_full_resolution_masks``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc

import numpy as np
import torch
from skimage.draw import disk

from samlib.models.arch import VIT_B, VIT_TINY, build_sam
from samlib.tiling.tiles import default_tiling, segment_everything_tiled, tile_layout


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB (Linux reports KiB)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


def sharpen(model: torch.nn.Module, factor: float = 100.0) -> None:
    """Scale the mask logits of a random model so that its masks are stable (kept)."""
    with torch.no_grad():
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight *= factor
            mlp.layers[-1].bias *= factor


def disks_image(size: int, n: int, seed: int = 0) -> np.ndarray:
    """(size, size, 3) uint8 image of ``n`` coloured disks (radius 8-40) on black."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.uint8)
    for _ in range(n):
        r, c = rng.integers(0, size, 2)
        rr, cc = disk((r, c), rng.integers(8, 40), shape=img.shape[:2])
        img[rr, cc] = rng.integers(60, 256, 3)
    return img


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["tiny", "vit_b"], default="tiny")
    ap.add_argument("--size", type=int, default=4096, help="image side, pixels")
    ap.add_argument("--disks", type=int, default=3000)
    ap.add_argument("--points-per-side", type=int, default=4, help="reduced grid per tile")
    ap.add_argument("--tile-size", type=int, default=None)
    ap.add_argument("--halo", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-every", type=int, default=1, help="print every N tiles")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_sam(VIT_B if args.model == "vit_b" else VIT_TINY)
    sharpen(model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device).eval()
    img = disks_image(args.size, args.disks)
    tile, halo = default_tiling(model)
    tile = args.tile_size or tile
    halo = args.halo if args.halo is not None else halo
    n_tiles = len(tile_layout(img.shape[:2], tile, halo))
    base = peak_rss_mb()
    print(
        f"model {args.model} (random weights, img_size {model.image_encoder.img_size}) on "
        f"{device}, {torch.get_num_threads()} thread(s); image {img.shape[1]}x{img.shape[0]}; "
        f"tile_size {tile}, halo {halo}: {n_tiles} tiles; grid {args.points_per_side}^2 "
        "points per tile (reduced)"
    )
    print(f"peak RSS before segmenting (model + image): {base:.0f} MB")

    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if done == total or done % args.report_every == 0:
            el = time.perf_counter() - t0
            print(f"  tile {done}/{total}  {el:.0f} s  peak RSS {peak_rss_mb():.0f} MB", flush=True)

    tracemalloc.start()
    records = segment_everything_tiled(
        model,
        img,
        tile_size=tile,
        halo=halo,
        progress=progress,
        points_per_side=args.points_per_side,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        output_mode="coco_rle",
    )
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    dt = time.perf_counter() - t0
    full = len(records) * img.shape[0] * img.shape[1] / 2**20
    print(f"records: {len(records)} in {dt:.0f} s ({dt / n_tiles:.2f} s per tile)")
    print(f"peak RSS: {peak_rss_mb():.0f} MB (before segmenting {base:.0f} MB)")
    print(f"peak traced Python/NumPy allocations during the run: {traced / 2**20:.0f} MB")
    if device == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MB")
    print(f"(a full-resolution bool mask per record would take {full:.0f} MB)")


if __name__ == "__main__":
    main()
