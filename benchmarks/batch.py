"""Batch throughput: images per minute on 1 and 2 Dask workers, and peak memory per worker.

The same 16 synthetic nuclei images (``nuclei_image``, seeds 0-15, 256 px frame) and the
bundled demo model with its suggested parameters; each worker runs one torch thread. Each
run starts from an empty output folder and a fresh ``LocalCluster`` (model loading
included). Prints images per minute, the ratio of 2 workers to 1, and every worker's peak
resident memory.

    python benchmarks/batch.py [--images 16] [--points-per-side 32]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import tifffile
from distributed import Client, LocalCluster

from samlib.batch import ModelSpec, find_images, run_batch
from samlib.datasets.synth import nuclei_image
from samlib.everything.params import GeneratorParams
from samlib.models.loading import suggested_params
from samlib.recipe import EverythingSettings, LiveFilters, ModelRef, Recipe


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--points-per-side", type=int, default=32)
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
