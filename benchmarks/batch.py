"""Batch throughput: images per minute on 1 and 2 Dask workers, and peak memory per worker.

The same 16 synthetic nuclei images (``nuclei_image``, seeds 0-15, 256 px frame) and the
bundled demo model with its suggested parameters; each worker runs one torch thread. Each
run starts from an empty output folder and a fresh ``LocalCluster`` (model loading
included). Prints images per minute, the ratio of 2 workers to 1, and every worker's peak
resident memory.

With ``--huge``, one large image instead (a nuclei image tiled to ``--sides`` px a side,
default 1,024 and 2,048) through the distributed tiled path
(:func:`samlib.batch.replay_everything_on`, a Dask task per tile of the demo model's
input) on 2 workers: seconds, masks and every worker's peak resident memory for each
size, which stays flat as the image grows, and the peak of this process, which converts
the image and stitches.

    python benchmarks/batch.py [--images 16] [--points-per-side 32] [--huge [--sides 1024,2048]]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from distributed import Client, LocalCluster

from samlib.batch import ModelSpec, find_images, replay_everything_on, run_batch
from samlib.datasets.synth import nuclei_image
from samlib.everything.params import GeneratorParams
from samlib.image.display import to_rgb8
from samlib.models.loading import suggested_params
from samlib.recipe import EverythingSettings, LiveFilters, ModelRef, Recipe, Tiling


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--huge", action="store_true", help="one large image, tiles on Dask")
    ap.add_argument("--sides", default="1024,2048", help="--huge image sides, px")
    args = ap.parse_args()
    if args.huge:
        huge(args.points_per_side, [int(v) for v in args.sides.split(",")])
        return
    gen = GeneratorParams(points_per_side=args.points_per_side, **suggested_params("small_cnn"))
    recipe = Recipe(
        kind="everything",
        model=ModelRef("small_cnn"),
        everything=EverythingSettings(gen),
        filters=LiveFilters.from_generator(gen),
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for seed in range(args.images):
            tifffile.imwrite(folder / f"nuclei_{seed:02d}.tif", nuclei_image(seed, 256)[0])
        paths = find_images([str(folder)])
        rates = {}
        for workers in (1, 2):
            cluster = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
            )
            with cluster, Client(cluster) as client:
                t0 = time.perf_counter()
                report = run_batch(
                    paths,
                    recipe,
                    Path(tmp) / f"out{workers}",
                    model=ModelSpec("small_cnn", "cpu"),
                    client=client,
                    resume=False,
                )
                seconds = time.perf_counter() - t0
                peaks = client.run(_peak_rss_mb)
            assert report.exit_status == 0, [r.error for r in report.results]
            rates[workers] = len(paths) / seconds * 60
            masks = sum(r.n_masks for r in report.results)
            print(
                f"{workers} worker(s): {len(paths)} images in {seconds:.1f} s = "
                f"{rates[workers]:.1f} images/min ({masks} masks); peak RSS per worker: "
                + ", ".join(f"{mb:.0f} MB" for mb in peaks.values())
            )
    print(f"2 workers / 1 worker: {rates[2] / rates[1]:.2f}x [target >= 1.7x]")


def huge(points_per_side: int, sides: list[int]) -> None:
    """Peak memory per worker for one large image whose tiles are Dask tasks."""
    gen = GeneratorParams(points_per_side=points_per_side, **suggested_params("small_cnn"))
    recipe = Recipe(
        kind="everything",
        model=ModelRef("small_cnn"),
        tiling=Tiling(192, 32),  # windows of the demo model's 256-px input
        everything=EverythingSettings(gen),
        filters=LiveFilters.from_generator(gen),
    )
    tile = nuclei_image(0, 256)[0]
    for side in sides:
        reps = (-(-side // tile.shape[0]), -(-side // tile.shape[1]))
        rgb = to_rgb8(np.tile(tile, reps)[:side, :side])
        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
        with cluster, Client(cluster) as client:
            t0 = time.perf_counter()
            result = replay_everything_on(client, ModelSpec("small_cnn", "cpu"), recipe, rgb)
            seconds = time.perf_counter() - t0
            peaks = client.run(_peak_rss_mb)
        print(
            f"{side} x {side} px ({rgb.nbytes / 2**20:.0f} MB RGB): {seconds:.1f} s, "
            f"{len(result.kept)} masks; peak RSS per worker: "
            + ", ".join(f"{mb:.0f} MB" for mb in peaks.values())
            + f"; this process (conversion to RGB, stitching): {_peak_rss_mb():.0f} MB"
        )


if __name__ == "__main__":
    main()
