"""``samlib`` (also ``python -m samlib``): check, downloads, prompts, segment everything, scores.

Every subcommand exits with status 0 on success. Any failure, a bad input or an unexpected
error alike, prints one line ``samlib <command>: error: <reason>`` to stderr and exits with
status 2; an interruption (Ctrl-C) prints ``samlib <command>: interrupted`` and exits with 130.
A traceback is never printed: a user acts on the reason, and the reason names the value.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path
from typing import Any

from samlib.cli import commands as cli_commands
from samlib.cli.batch import cmd_batch
from samlib.errors import one_line

__all__ = ["main", "build_parser"]


# -- argument parsing helpers ---------------------------------------------------------
def _floats(text: str, n: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{what} must be numbers separated by commas: {text!r}"
        ) from None
    if len(values) not in n:
        raise argparse.ArgumentTypeError(
            f"{what} needs {' or '.join(map(str, n))} numbers: {text!r}"
        )
    return values


def _point(text: str) -> list[float]:
    values = _floats(text, (2, 3), "--point X,Y[,LABEL]")
    if len(values) == 3 and values[2] not in (0.0, 1.0):
        raise argparse.ArgumentTypeError(
            f"point label must be 1 (object) or 0 (background): {text!r}"
        )
    return values if len(values) == 3 else [*values, 1.0]


def _box(text: str) -> list[float]:
    return _floats(text, (4,), "--box X0,Y0,X1,Y1")


def _tiles(text: str) -> tuple[int, int]:
    values = _floats(text, (2,), "--tiles TILE_SIZE,HALO")
    if not all(v.is_integer() and v >= 0 for v in values) or values[0] < 16:
        raise argparse.ArgumentTypeError(
            f"--tiles needs whole pixels, a tile size >= 16 and a halo >= 0: {text!r}"
        )
    return int(values[0]), int(values[1])


TILES_HELP = (
    "cut a large image into tiles of TILE_SIZE px with HALO px of overlap, segment each at "
    "the model's resolution and stitch (e.g. 768,128 for SAM's 1024-px input)"
)


def _setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--set needs key=value, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


def _percentiles(text: str) -> tuple[float, float]:
    lo, hi = _floats(text, (2,), "--percentiles LOW,HIGH")
    return lo, hi


def _channels(text: str) -> list[int | None] | int:
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [None if p in ("", "-", "none") else int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--channels takes channel numbers like 0 or 1,0,-: {text!r}"
        ) from None
    if len(values) == 1 and values[0] is not None:
        return values[0]
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"--channels takes 1 or 3 entries (R,G,B): {text!r}")
    return values


def _image_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("image to RGB conversion")
    g.add_argument(
        "--channels", type=_channels, default=None, help="C or R,G,B source channels (- = black)"
    )
    g.add_argument(
        "--percentiles", type=_percentiles, default=None, help="LOW,HIGH (default 1,99.8)"
    )
    g.add_argument("--gamma", type=float, default=None, help="(default 1)")
    g.add_argument(
        "--plane", default=None, help="plane of a stack, or 'max' for a projection (default 0)"
    )


def _model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=None,
        help="registry name or checkpoint path (default: $SAMLIB_MODEL or the best downloaded)",
    )
    g.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)"
    )
    g.add_argument(
        "--no-cache",
        action="store_true",
        help="do not read or write the image-embedding disk cache",
    )
    g.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load checkpoints that need full unpickling (trusted files only)",
    )


def _result_options(p: argparse.ArgumentParser) -> None:
    """``--recipe``, ``--out`` and ``--export``: what prompt and everything share."""
    p.add_argument(
        "--recipe",
        type=Path,
        default=None,
        help="params.json from the app or an earlier run: replay its settings exactly",
    )
    p.add_argument(
        "--ignore-model-hash",
        action="store_true",
        help="no warning when the model's weights are not the recipe's",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--export",
        default=None,
        metavar="FORMAT[,FORMAT]",
        help="files to write: labels_tiff, labels_png, csv, coco, masks_zip, rois, params, or "
        "all (default: labels_tiff,csv,coco,params)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m samlib``."""
    parser = argparse.ArgumentParser(
        prog="samlib", description="Segment Anything for microscopy images."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="report Python, packages, device, memory and checkpoints")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--self-test", action="store_true", help="also run the pipeline on a tiny random model"
    )

    p = sub.add_parser("download", help="download a registered checkpoint into the cache")
    p.add_argument("model", nargs="+", help="registry name(s), e.g. vit_b vit_b_lm")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("prompt", help="masks for point and box prompts")
    p.add_argument("image")
    p.add_argument(
        "--point",
        type=_point,
        action="append",
        default=[],
        metavar="X,Y[,LABEL]",
        help="image pixels; label 1 object (default), 0 background",
    )
    p.add_argument("--box", type=_box, action="append", default=[], metavar="X0,Y0,X1,Y1")
    p.add_argument(
        "--single", action="store_true", help="one mask per prompt instead of the best of three"
    )
    p.add_argument(
        "--no-clip-to-box",
        action="store_true",
        help="keep mask pixels that lie outside their box (the app, like this command, drops "
        "them by default)",
    )
    _result_options(p)
    _model_options(p)
    _image_options(p)

    p = sub.add_parser("everything", help="segment everything (SamAutomaticMaskGenerator)")
    p.add_argument("image")
    p.add_argument(
        "--set",
        type=_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="generator parameter, e.g. points_per_side=16 (default: SAM's, or the "
        "thresholds the registry suggests for the model)",
    )
    p.add_argument("--fast", action="store_true", help="faster approximate mode")
    p.add_argument(
        "--min-area",
        type=float,
        default=None,
        help="drop smaller masks (pixels, or µm² with --pixel-size)",
    )
    p.add_argument("--max-area", type=float, default=None, help="drop larger masks")
    p.add_argument(
        "--pixel-size", type=float, default=None, help="µm per pixel (default: from the file)"
    )
    p.add_argument(
        "--keep-whole-image", action="store_true", help="keep masks covering most of the image"
    )
    p.add_argument("--tiles", type=_tiles, default=None, metavar="TILE_SIZE,HALO", help=TILES_HELP)
    _result_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _model_options(p)
    _image_options(p)

    p = sub.add_parser("batch", help="run a segment-everything recipe over many images")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or globs")
    p.add_argument("--recipe", type=Path, required=True, help="params.json from the app or a run")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--pattern", default=None, help="file names within folders, e.g. '*.tif'")
    p.add_argument("--recursive", action="store_true", help="also look in sub-folders")
    p.add_argument(
        "--export",
        default=None,
        metavar="FORMAT[,FORMAT]",
        help="files per image beside labels.tif, measurements.csv and params.json (or all)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="Dask worker processes on this machine (default: cores / threads); 0 runs here",
    )
    p.add_argument("--threads-per-worker", type=int, default=1, help="torch threads per image")
    p.add_argument("--scheduler", default=None, help="address of a running Dask scheduler")
    p.add_argument("--no-resume", action="store_true", help="run images already done again")
    p.add_argument(
        "--tiles",
        type=_tiles,
        default=None,
        metavar="TILE_SIZE,HALO",
        help=TILES_HELP + "; replaces the recipe's tiling; on Dask each tile is a task",
    )
    p.add_argument(
        "--ignore-model-hash",
        action="store_true",
        help="no warning when the model's weights are not the recipe's",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="registry name or file (default: the recipe's)")
    g.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    g.add_argument("--allow-pickle", action="store_true", help="trusted checkpoints only")

    p = sub.add_parser("evaluate", help="compare a predicted label image with ground truth")
    p.add_argument("pred")
    p.add_argument("gt")

    # Subcommands with their own argument parsers (see DELEGATED); listed here for --help.
    for name, (_module, text) in DELEGATED.items():
        p = sub.add_parser(name, help=text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


#: What to lower when an allocation fails (the end of the one-line error).
MEMORY_ADVICE = "use a smaller image (crop it, or pick one plane), a smaller model or fewer prompts"

#: Subcommands implemented by ``main(argv)`` functions of other modules.
DELEGATED = {
    "train": ("samlib.training.loop", "fine-tune a model on images with instance labels"),
    "evaluate-model": (
        "samlib.evaluation.benchmark",
        "score a model on an image with ground truth (point, box and everything metrics)",
    ),
}


# -- shared steps ---------------------------------------------------------------------
COMMANDS = {
    "check": cli_commands.cmd_check,
    "download": cli_commands.cmd_download,
    "prompt": cli_commands.cmd_prompt,
    "everything": cli_commands.cmd_everything,
    "batch": cmd_batch,
    "evaluate": cli_commands.cmd_evaluate,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0, 2 on any error, 130 on Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    known = argv and (argv[0] in COMMANDS or argv[0] in DELEGATED)
    prog = f"samlib {argv[0]}" if known else "samlib"
    try:
        if argv and argv[0] in DELEGATED:
            return import_module(DELEGATED[argv[0]][0]).main(argv[1:])
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except MemoryError as exc:
        print(f"{prog}: error: {one_line(exc)}; {MEMORY_ADVICE}", file=sys.stderr)
        return 2
    except Exception as exc:  # the one place where every failure becomes one line
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return 2
