"""The subcommands of ``python -m samlib`` (argument parsing is in :mod:`samlib.cli.parser`)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from samlib.errors import ParameterError, PromptError

__all__ = ["cmd_check", "cmd_download", "cmd_everything", "cmd_evaluate", "cmd_prompt"]


class _Bar:
    """A one-line progress bar on stderr (bytes or items)."""

    def __init__(self, label: str, unit: str = "", enabled: bool = True) -> None:
        self.label, self.unit, self.enabled = label, unit, enabled
        self.start = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.2 and done != total):
            return
        self.last = now
        scale, unit = (1e6, " MB") if self.unit == "B" else (1, "")
        rate = done / scale / max(now - self.start, 1e-6)
        if total:
            frac = min(done / total, 1.0)
            bar = "#" * int(frac * 30)
            amount = f"{done / scale:.1f}/{total / scale:.1f}{unit}"
            text = f"{self.label} [{bar:<30}] {100 * frac:5.1f}% {amount}"
        else:
            text = f"{self.label} {done / scale:.1f}{unit}"
        sys.stderr.write(f"\r{text}  {rate:.1f}{unit}/s ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _load_image(args: argparse.Namespace):
    from samlib.image.io import read_image, to_rgb8

    image = read_image(args.image)
    plane: int | str = args.plane if args.plane == "max" else _int_plane(args.plane)
    rgb = to_rgb8(
        image, channels=args.channels, percentiles=args.percentiles, gamma=args.gamma, plane=plane
    )
    settings = {
        "channels": args.channels,
        "percentiles": list(args.percentiles),
        "gamma": args.gamma,
        "plane": plane,
    }
    return image, rgb, settings


def _int_plane(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ParameterError(f"--plane must be a plane number or 'max', got {text!r}") from None


def _load_model(args: argparse.Namespace):
    from samlib.models.loading import default_model_name, load_model

    return load_model(
        args.model or default_model_name(), args.device, allow_pickle=args.allow_pickle
    )


def _image_sha(image) -> str | None:
    value = getattr(image, "hash", None)
    return value() if callable(value) else value


def _embedding(args: argparse.Namespace, model, rgb, settings: dict[str, Any]):
    """The image embedding, from the disk cache unless ``--no-cache`` (encoded on a miss)."""
    from samlib.models.embeddings import EmbeddingCache, compute_embedding, default_cache_dir

    if args.no_cache:
        return compute_embedding(model, rgb)
    return EmbeddingCache(default_cache_dir(), max_items=1).get(model, rgb, settings)


def _provenance(args, model, image, params: dict[str, Any]) -> dict[str, Any]:
    from samlib.outputs.export import provenance

    info = model.samlib_info
    return provenance(
        params,
        model_name=info.name,
        model_sha256=info.sha256,
        image_name=Path(args.image).name,
        image_sha256=_image_sha(image),
        extra={"command": "python -m samlib " + " ".join(sys.argv[1:])},
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
        bar = _Bar(name, "B", enabled=not args.quiet)
        try:
            path = download_model(name, progress=bar)
        finally:
            if bar.last:
                bar.close()
        print(path)
    return 0


def cmd_prompt(args: argparse.Namespace) -> int:
    import numpy as np

    from samlib.outputs.export import write_exports
    from samlib.prompts.objects import PromptSet, predict_candidates, records_of

    if not args.point and not args.box:
        raise PromptError("give at least one --point X,Y[,LABEL] or --box X0,Y0,X1,Y1")
    image, rgb, settings = _load_image(args)
    model = _load_model(args)
    prompts = PromptSet(
        np.array([p[:2] for p in args.point], dtype=float).reshape(-1, 2),
        np.array([int(p[2]) for p in args.point], dtype=int),
        np.array(args.box, dtype=float).reshape(-1, 4),
    )
    emb = _embedding(args, model, rgb, settings)
    found = predict_candidates(
        model, emb, prompts, multimask=not args.single, clip_to_box=not args.no_clip_to_box
    )
    records = records_of(found.objects())
    params = {
        "points": args.point,
        "boxes": args.box,
        "multimask": not args.single,
        "clip_to_box": not args.no_clip_to_box,
        "image": settings,
    }
    written = write_exports(
        args.out,
        records,
        rgb.shape[:2],
        intensities=image,
        pixel_size_um=getattr(image, "pixel_size_um", None),
        provenance=_provenance(args, model, image, params),
        image_name=Path(args.image).name,
        formats=("labels_tiff", "coco", "csv", "params"),
    )
    summary = [
        {"prompt": i, "area": r["area"], "bbox": r["bbox"], "predicted_iou": r["predicted_iou"]}
        for i, r in enumerate(records)
    ]
    print(json.dumps({"masks": summary, "files": sorted(str(p) for p in written.values())}))
    return 0


def cmd_everything(args: argparse.Namespace) -> int:
    from samlib.everything.generate import segment_everything
    from samlib.everything.params import GeneratorParams
    from samlib.outputs.export import write_exports
    from samlib.records.filters import filter_records

    params = dict(args.set)
    GeneratorParams.from_kwargs(**params)  # refuse bad parameters before any slow step
    image, rgb, settings = _load_image(args)
    model = _load_model(args)
    from samlib.models.loading import suggested_params

    params = {**suggested_params(model), **params}  # --set wins over the model's suggestion
    bar = _Bar("segment everything", enabled=not args.quiet)
    try:
        emb = _embedding(args, model, rgb, settings)
        records = segment_everything(
            model, rgb, fast=args.fast, progress=bar, embedding=emb, **params
        )
    finally:
        if bar.last:
            bar.close()
    pixel_size = (
        args.pixel_size if args.pixel_size is not None else getattr(image, "pixel_size_um", None)
    )
    report = filter_records(
        records,
        min_area=args.min_area,
        max_area=args.max_area,
        pixel_size_um=args.pixel_size,
        drop_whole_image=not args.keep_whole_image,
        image_shape=rgb.shape[:2],
    )
    kept = report.select(records)
    prov_params = {
        "generator": params,
        "fast": args.fast,
        "filters": {
            "min_area": args.min_area,
            "max_area": args.max_area,
            "pixel_size_um": args.pixel_size,
            "drop_whole_image": not args.keep_whole_image,
        },
        "image": settings,
    }
    written = write_exports(
        args.out,
        kept,
        rgb.shape[:2],
        intensities=image,
        pixel_size_um=pixel_size,
        provenance=_provenance(args, model, image, prov_params),
        image_name=Path(args.image).name,
        formats=("labels_tiff", "coco", "csv", "params"),
    )
    print(
        json.dumps(
            {
                "masks": len(kept),
                "generated": len(records),
                "files": sorted(str(p) for p in written.values()),
            }
        )
    )
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
