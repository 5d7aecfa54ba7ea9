"""``samlib batch``: a segment-everything recipe over many images (see :mod:`samlib.batch`).

samlib modules are imported inside the command, as in :mod:`samlib.cli.commands`, so that
the parser starts without them (``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from samlib.cli.commands import export_formats, warn_model_mismatch
from samlib.errors import ModelNotDownloadedError, UnknownModelError

__all__ = ["cmd_batch"]


def cmd_batch(args: argparse.Namespace) -> int:
    from samlib.batch import ModelSpec, find_images, run_batch
    from samlib.models.checkpoints import file_sha256
    from samlib.models.loading import REGISTRY, checkpoint_path, verify_cached
    from samlib.recipe import Tiling, read_recipe

    formats = [] if args.export is None else export_formats(args.export)
    recipe = read_recipe(args.recipe)
    if args.tiles is not None:
        recipe = dataclasses.replace(recipe, tiling=Tiling(*args.tiles))
    paths = find_images(args.inputs, pattern=args.pattern, recursive=args.recursive)
    name = args.model or recipe.model.name
    if name not in REGISTRY and not Path(name).is_file():
        raise UnknownModelError(f"model {name!r} is not here; give the recipe's model with --model")
    if name in REGISTRY and not checkpoint_path(name).is_file():
        raise ModelNotDownloadedError(
            f"model {name!r} is not downloaded; run `samlib download {name}`"
        )
    sha = verify_cached(name) if name in REGISTRY else file_sha256(name)
    warn_model_mismatch(args, recipe, sha)

    def progress(done: int, total: int, result) -> None:
        if not args.quiet:
            tail = f"{result.n_masks} masks" if result.status == "done" else result.error
            print(f"[{done}/{total}] {result.name}: {result.status}, {tail}", file=sys.stderr)

    report = run_batch(
        paths,
        recipe,
        args.out,
        model=ModelSpec(name, args.device, args.allow_pickle),
        formats=formats,
        resume=not args.no_resume,
        workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        scheduler=args.scheduler,
        progress=progress,
    )
    summary = {
        "images": len(report.results),
        "done": len(report.results) - report.n_failed,
        "failed": report.n_failed,
        "skipped": report.skipped,
        "dashboard": report.dashboard,
        "out": str(args.out),
    }
    print(json.dumps(summary))
    return report.exit_status
