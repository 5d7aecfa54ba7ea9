"""The subcommands of ``samlib`` (argument parsing is in :mod:`samlib.cli.parser`).

``everything`` and ``prompt`` describe what they do as a recipe (:mod:`samlib.recipe`), or
replay one given with ``--recipe``, and write the export files the app offers under the
same names (:data:`samlib.outputs.export.EXPORTS`).

samlib modules are imported inside the commands: importing them all (torch, scikit-image,
pandas) takes about a hundred times as long as the parser alone (``benchmarks/README.md``),
which ``samlib --help`` and every usage error would otherwise pay.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

from samlib.cli.progress import ProgressBar
from samlib.errors import (
    ParameterError,
    PromptError,
    RecipeError,
    UnknownModelError,
)

__all__ = [
    "cmd_check",
    "cmd_download",
    "cmd_everything",
    "cmd_evaluate",
    "cmd_prompt",
    "export_formats",
    "warn_model_mismatch",
]


def _display(args: argparse.Namespace, image):
    """The image conversion the options ask for (the image's defaults where none are given)."""
    from samlib.image.display import DisplaySettings, default_channels

    channels = args.channels
    if channels is None:
        channels = default_channels(image.n_channels)
    elif isinstance(channels, int):
        channels = (channels,) * 3
    plane: int | str = "max" if args.plane == "max" else _int_plane(args.plane or "0")
    return DisplaySettings(
        channels=tuple(channels),
        percentiles=tuple(args.percentiles or (1.0, 99.8)),
        gamma=1.0 if args.gamma is None else args.gamma,
        plane=plane,
    )


def _int_plane(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ParameterError(f"--plane must be a plane number or 'max', got {text!r}") from None


#: Options a recipe replaces, per command: given with ``--recipe`` they are refused.
RECIPE_REPLACES = {
    "everything": (
        "set",
        "fast",
        "min_area",
        "max_area",
        "pixel_size",
        "keep_whole_image",
        "tiles",
    ),
    "prompt": ("point", "box", "single", "no_clip_to_box"),
}
IMAGE_OPTIONS = ("channels", "percentiles", "gamma", "plane")


def _read_recipe(args: argparse.Namespace, kind: str):
    """The ``--recipe`` file, checked against the command and the other options."""
    from samlib.recipe import read_recipe

    recipe = read_recipe(args.recipe)
    if recipe.kind != kind:
        other = "samlib everything" if recipe.kind == "everything" else "samlib prompt"
        what = "segment-everything" if recipe.kind == "everything" else "prompts"
        raise RecipeError(f"{args.recipe} is a {what} recipe: replay it with `{other}`")
    command = "everything" if kind == "everything" else "prompt"
    given = [
        name
        for name in (*RECIPE_REPLACES[command], *IMAGE_OPTIONS)
        if getattr(args, name) not in (None, False, [])
    ]
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise RecipeError(f"{flags} cannot go with --recipe, which sets them; edit the recipe")
    return recipe


def _load_model(args: argparse.Namespace, recipe=None):
    """The model of ``--model``, else of the recipe, else the default; loaded as the app
    loads it (fast encoder), so that a recipe gives the app's pixels."""
    from samlib.models.loading import default_model_name, load_model

    name = args.model or (recipe.model.name if recipe is not None else default_model_name())
    try:
        model = load_model(name, args.device, allow_pickle=args.allow_pickle, fast_encoder=True)
    except UnknownModelError as exc:
        if args.model or recipe is None:
            raise
        raise UnknownModelError(f"{exc}; give the recipe's model with --model") from None
    if recipe is not None:
        warn_model_mismatch(args, recipe, model)
    return model


def warn_model_mismatch(args: argparse.Namespace, recipe, model) -> None:
    """Say on stderr when ``model`` (loaded, or a SHA-256) is not the recipe's, unless
    ``--ignore-model-hash``."""
    from samlib.errors import ModelMismatchWarning
    from samlib.recipe import check_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelMismatchWarning)  # said once, below
        text = check_model(recipe, model)
    if text and not args.ignore_model_hash:
        print(f"samlib: warning: {text} (--ignore-model-hash hides this)", file=sys.stderr)


def _embedding(args: argparse.Namespace, model, rgb, settings: dict[str, Any]):
    """The image embedding, from the disk cache unless ``--no-cache`` (encoded on a miss)."""
    from samlib.models.embeddings import EmbeddingCache, compute_embedding, default_cache_dir

    if args.no_cache:
        return compute_embedding(model, rgb)
    return EmbeddingCache(default_cache_dir(), max_items=1).get(model, rgb, settings)


#: What ``--export`` writes when not given.
DEFAULT_EXPORTS = ("labels_tiff", "csv", "coco", "params")


def export_formats(text: str | None) -> list[str]:
    """The format names of ``--export``, checked."""
    from samlib.outputs.export import EXPORTS, check_formats

    if text is None:
        return list(DEFAULT_EXPORTS)
    names = list(EXPORTS) if text == "all" else [t.strip() for t in text.split(",")]
    check_formats(names)
    return names


def _write(
    args: argparse.Namespace, recipe, image, rgb, records, formats: list[str]
) -> dict[str, Path]:
    """Write the exports of ``--export`` with the recipe and its provenance as params.json."""
    from samlib.recipe import write_result

    return write_result(
        args.out,
        recipe,
        image,
        rgb,
        records,
        image_name=Path(args.image).name,
        source="samlib " + " ".join(sys.argv[1:]),
        formats=formats,
    )


# -- subcommands ----------------------------------------------------------------------
def cmd_check(args: argparse.Namespace) -> int:
    from samlib.app.selftest import checkpoint_table, environment_report
    from samlib.models.loading import cache_dir

    report = environment_report()
    report["cache_dir"] = str(cache_dir())
    report["checkpoints"] = checkpoint_table()
    if args.self_test:
        from samlib.app.selftest import self_test

        report["self_test"] = [vars(s) for s in self_test()]
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        for key, value in report.items():
            if key == "packages":
                print("packages:")
                for name, ver in value.items():
                    print(f"  {name:<24} {ver}")
            elif key == "checkpoints":
                print("checkpoints:")
                for row in value:
                    mark = "cached " if row["cached"] else "missing"
                    print(
                        f"  {row['model']:<10} {mark} {row['size_mb'] or '?':>8} MB  {row['path']}"
                    )
            elif key == "self_test":
                print("self-test:")
                for s in value:
                    print(
                        f"  {'ok  ' if s['ok'] else 'FAIL'} {s['name']:<20} "
                        f"{s['seconds']:.2f} s  {s['detail']}"
                    )
            else:
                print(f"{key}: {value}")
    failed = [s for s in report.get("self_test", []) if not s["ok"]]
    return 2 if failed else 0


def cmd_download(args: argparse.Namespace) -> int:
    from samlib.models.loading import download_model, model_status

    for name in args.model:
        model_status(name)  # unknown names fail before any network access
    for name in args.model:
        bar = ProgressBar(name, "B", enabled=not args.quiet)
        try:
            path = download_model(name, progress=bar)
        finally:
            if bar.last:
                bar.close()
        print(path)
    return 0


def cmd_prompt(args: argparse.Namespace) -> int:
    import numpy as np

    from samlib.image.io import read_image
    from samlib.prompts.objects import PromptSet, predict_candidates, records_of
    from samlib.recipe import ModelRef, ObjectPrompts, Recipe, prompt_source, replay_prompts

    formats = export_formats(args.export)
    recipe = _read_recipe(args, "prompts") if args.recipe else None
    if recipe is None and not args.point and not args.box:
        raise PromptError("give at least one --point X,Y[,LABEL] or --box X0,Y0,X1,Y1")
    image = read_image(args.image)
    display = recipe.image if recipe is not None else _display(args, image)
    rgb = display.render(image)
    model = _load_model(args, recipe)
    if recipe is not None:
        if recipe.tiling is None:
            source = _embedding(args, model, rgb, display.as_dict())
        else:
            source = prompt_source(recipe, model, rgb)
        objects = replay_prompts(recipe, model, source)
    else:
        prompts = PromptSet(
            np.array([p[:2] for p in args.point], dtype=float).reshape(-1, 2),
            np.array([int(p[2]) for p in args.point], dtype=int),
            np.array(args.box, dtype=float).reshape(-1, 4),
        )
        emb = _embedding(args, model, rgb, display.as_dict())
        found = predict_candidates(
            model, emb, prompts, multimask=not args.single, clip_to_box=not args.no_clip_to_box
        )
        objects = found.objects()
        recipe = Recipe(
            kind="prompts",
            model=ModelRef.of(model),
            image=display,
            pixel_size_um=getattr(image, "pixel_size_um", None),
            objects=tuple(ObjectPrompts.of(o) for o in objects),
        )
    records = records_of(objects)
    written = _write(args, recipe, image, rgb, records, formats)
    summary = [
        {"prompt": i, "area": r["area"], "bbox": r["bbox"], "predicted_iou": r["predicted_iou"]}
        for i, r in enumerate(records)
    ]
    print(json.dumps({"masks": summary, "files": sorted(str(p) for p in written.values())}))
    return 0


def _everything_recipe(args: argparse.Namespace, image, model):
    """The recipe the ``everything`` options describe: decode at the thresholds, then
    the whole-image and area filters."""
    from samlib.everything.params import GeneratorParams
    from samlib.models.loading import suggested_params
    from samlib.recipe import EverythingSettings, LiveFilters, ModelRef, Recipe, Tiling
    from samlib.records.filters import um2_to_px

    # --set wins over the model's suggestion
    gen = GeneratorParams.from_kwargs(**{**suggested_params(model), **dict(args.set)})
    pixel_size = args.pixel_size
    if pixel_size is None:
        pixel_size = getattr(image, "pixel_size_um", None)
    lo, hi = args.min_area, args.max_area
    if args.pixel_size is not None:  # the limits are µm²
        lo = None if lo is None else um2_to_px(lo, args.pixel_size)
        hi = None if hi is None else um2_to_px(hi, args.pixel_size)
    filters = LiveFilters.from_generator(
        gen, drop_whole_image=not args.keep_whole_image, min_area=lo, max_area=hi
    )
    everything = EverythingSettings(
        gen,
        fast=args.fast,
        iou_floor=gen.pred_iou_thresh,
        stability_floor=gen.stability_score_thresh,
    )
    return Recipe(
        kind="everything",
        model=ModelRef.of(model),
        image=_display(args, image),
        pixel_size_um=pixel_size,
        tiling=None if args.tiles is None else Tiling(*args.tiles),
        everything=everything,
        filters=filters,
    )


def cmd_everything(args: argparse.Namespace) -> int:
    from samlib.everything.params import GeneratorParams
    from samlib.image.io import read_image
    from samlib.recipe import needs_embedding, replay_everything

    formats = export_formats(args.export)
    recipe = _read_recipe(args, "everything") if args.recipe else None
    if recipe is None:
        GeneratorParams.from_kwargs(**dict(args.set))  # bad parameters fail before slow steps
    image = read_image(args.image)
    model = _load_model(args, recipe)
    if recipe is None:
        recipe = _everything_recipe(args, image, model)
    rgb = recipe.image.render(image)
    bar = ProgressBar("segment everything", enabled=not args.quiet)
    try:
        emb = None
        if needs_embedding(recipe.tiling, rgb.shape[:2]):
            emb = _embedding(args, model, rgb, recipe.image.as_dict())
        result = replay_everything(recipe, model, rgb, embedding=emb, progress=bar)
    finally:
        if bar.last:
            bar.close()
    written = _write(args, recipe, image, rgb, result.kept, formats)
    summary = {
        "masks": len(result.kept),
        "generated": len(result.records),
        "files": sorted(str(p) for p in written.values()),
    }
    print(json.dumps(summary))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from samlib.evaluation.metrics import evaluate
    from samlib.image.io import read_image

    arrays = []
    for path in (args.pred, args.gt):
        img = read_image(path)
        if img.n_planes != 1 or img.n_channels != 1:
            raise ParameterError(f"{path} is not a 2-D label image (shape {img.source_shape})")
        arrays.append(img.plane(0)[..., 0])
    if arrays[0].shape != arrays[1].shape:
        raise ParameterError(f"label images differ in size: {arrays[0].shape} vs {arrays[1].shape}")
    print(json.dumps(_json_safe(evaluate(arrays[0], arrays[1]).to_dict()), allow_nan=False))
    return 0


def _json_safe(value: Any) -> Any:
    """Plain JSON values: NaN and infinity (e.g. no matched object) become null."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
