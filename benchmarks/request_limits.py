"""What one request costs: the measurements behind samlib's per-request limits.

- ``convert``: the peak of Python/NumPy allocations (``tracemalloc``) while
  :func:`samlib.image.display.to_rgb8` converts one plane, in bytes per pixel of the plane
  (H x W), for every supported dtype, 1-4 channels, with NaN, and for the max projection of
  a stack; beside it :func:`samlib.image.display.conversion_bytes`, the estimate that
  ``to_rgb8`` checks against its limit before converting.
- ``prompts``: time and the peak of NumPy allocations of one
  :func:`samlib.prompts.prompting.predict` call with B boxes, or with N points in one prompt
  set, on a random-weight vit_b decoder (the mask decoder of every SAM size) and a random
  embedding of an H x W image.

Usage::

    python benchmarks/request_limits.py convert [--size 512]
    python benchmarks/request_limits.py prompts [--size 1024] [--threads 2]

Recorded figures: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
import torch

from samlib.image.display import conversion_bytes, to_rgb8
from samlib.image.microscopy import as_image
from samlib.models.arch import VIT_B, build_sam
from samlib.models.embeddings import Embedding
from samlib.prompts.prompting import predict

DTYPES = ["uint8", "uint16", "int32", "float32", "float64"]


def _image(rng, dtype: str, shape: tuple[int, ...], nan: bool) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "f":
        a = rng.random(shape).astype(dt)
        if nan:
            a.flat[::7] = np.nan
        return a
    return rng.integers(0, np.iinfo(dt).max, shape, endpoint=True).astype(dt)


def convert(size: int) -> None:
    """Peak bytes per plane pixel of to_rgb8, against its estimate."""
    rng = np.random.default_rng(0)
    print("dtype    channels planes plane NaN  measured B/px  estimate B/px")
    worst = 0.0
    for dtype in DTYPES:
        for channels in (1, 2, 3, 4):
            for planes, plane in ((1, 0), (4, "max")):
                for nan in (False, True) if dtype.startswith("float") else (False,):
                    shape = (planes, size, size, channels)
                    img = as_image(_image(rng, dtype, shape, nan), "ZYXC")
                    pick = (0, 1, 2) if channels >= 3 else None
                    tracemalloc.start()
                    to_rgb8(img, plane=plane, channels=pick)
                    peak = tracemalloc.get_traced_memory()[1]
                    tracemalloc.stop()
                    est = conversion_bytes(img, plane=plane)
                    px = size * size
                    worst = max(worst, peak / est)
                    print(
                        f"{dtype:8s} {channels:8d} {planes:6d} {plane!s:5s} {nan!s:5s} "
                        f"{peak / px:13.1f}  {est / px:13.1f}"
                    )
    print(f"largest measured / estimate: {worst:.2f}")


def prompts(size: int, threads: int) -> None:
    """Seconds and NumPy peak of one predict() call with B boxes or N points."""
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = build_sam(VIT_B)
    rng = np.random.default_rng(0)
    emb = Embedding(torch.randn(1, 256, 64, 64), (size, size), (1024, 1024))
    predict(model, emb, points=[[5.0, 5.0]], labels=[1])  # warm-up
    for kind, counts in (("boxes", (1, 8, 64)), ("points", (1, 250, 1000, 2000))):
        for n in counts:
            if kind == "boxes":
                xy = rng.uniform(0, size - 40, (n, 2))
                kwargs = {"boxes": np.hstack([xy, xy + 30])}
            else:
                kwargs = {"points": rng.uniform(0, size, (n, 2)), "labels": np.ones(n, int)}
            tracemalloc.start()
            t0 = time.perf_counter()
            predict(model, emb, stability_offset=1.0, **kwargs)
            seconds = time.perf_counter() - t0
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            print(
                f"{size} px, {n:5d} {kind:6s}: {seconds:6.2f} s ({seconds / n:.3f} s each), "
                f"NumPy peak {peak / 2**20:7.1f} MiB"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["convert", "prompts"])
    ap.add_argument("--size", type=int, default=None, help="image side, px (512 / 1024)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (prompts)")
    args = ap.parse_args()
    if args.what == "convert":
        convert(args.size or 512)
    else:
        prompts(args.size or 1024, args.threads)


if __name__ == "__main__":
    main()
