"""Fine-tune a SAM model on (image, instance labels) pairs, or train a small one from scratch.

By default the image encoder is frozen: every image is encoded once and its embedding
cached, and only the prompt encoder and mask decoder learn, so fine-tuning runs on a CPU.
With ``freeze_encoder=False`` the whole model learns (used to train the bundled small
model on synthetic images; each step then encodes a fresh batch). Prompts come from the
ground truth (see :mod:`samlib.training.step`); validation IoU is measured every epoch on
held-out images and training stops early when it stops improving. The best weights are
written with :func:`samlib.models.loading.save_checkpoint`, next to a JSON sidecar holding the base
model, the data, the parameters and the metrics.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from segment_anything.modeling import Sam

from samlib.errors import ParameterError
from samlib.image.display import to_rgb8
from samlib.image.io import read_image
from samlib.models.arch import SamConfig
from samlib.models.loading import default_model_name, load_model, pick_device, save_checkpoint
from samlib.training.prompts import Sample, prepare_sample
from samlib.training.step import train_step, validate

Pair = tuple[np.ndarray, np.ndarray]


@dataclass
class TrainParams:
    """Training settings (all plain values; stored in the sidecar JSON).

    ``steps_per_epoch`` steps of ``batch_images`` images each make an epoch; ``None``
    means one pass over the training images (at least 10 steps). ``max_minutes`` stops
    training after that wall time, keeping the best epoch so far. The mask loss is
    ``focal_weight * focal + bce_weight * cross-entropy + dice`` (SAM: 20 and 0). From
    scratch the focal term is left out for ``focal_delay_steps`` steps and then rises
    linearly over ``focal_ramp_steps``: on its own it first drives every logit negative,
    and a fresh decoder then stalls there.
    """

    epochs: int = 20
    steps_per_epoch: int | None = None
    batch_images: int = 1
    lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    n_prompts: int = 8
    n_corrections: int = 1
    n_background: int = 2
    touching_weight: float = 1.0
    focal_weight: float = 20.0
    bce_weight: float = 0.0
    focal_ramp_steps: int = 0
    focal_delay_steps: int = 0
    freeze_encoder: bool = True
    patience: int = 4
    seed: int = 0
    max_minutes: float | None = None
    device: str | None = None

    def check(self) -> None:
        """Raise :class:`ParameterError` for values that cannot work."""
        for name in ("epochs", "batch_images", "n_prompts", "patience"):
            if getattr(self, name) < 1:
                raise ParameterError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ParameterError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch!r}")
        if not self.lr > 0:
            raise ParameterError(f"lr must be > 0, got {self.lr!r}")
        if not self.touching_weight > 0:
            raise ParameterError(f"touching_weight must be > 0, got {self.touching_weight!r}")


@dataclass
class TrainResult:
    """What :func:`train` did: per-epoch history, the best epoch and where it was written."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_iou: float = 0.0
    before: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    checkpoint: Path | None = None


def _encode(model: Sam, samples: list[Sample], grad: bool) -> list[torch.Tensor]:
    x = torch.stack([s.x for s in samples]).to(model.device)
    with torch.set_grad_enabled(grad):
        feats = model.image_encoder(x)
    return [feats[i : i + 1] for i in range(len(samples))]


def _encode_all(model: Sam, samples: list[Sample]) -> list[torch.Tensor]:
    return [e for s in samples for e in _encode(model, [s], grad=False)]


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def _ramp(step: int, steps: int) -> float:
    return float(step >= 0) if steps <= 0 else min(1.0, max(0.0, step / steps))


def write_sidecar(path: Path, info: dict[str, Any]) -> Path:
    """Write ``info`` as indented JSON next to the checkpoint (``<name>.json``)."""
    side = path.with_suffix(".json")
    side.write_text(json.dumps(info, indent=2, default=str) + "\n")
    return side


def train(
    model: Sam,
    train_pairs: Sequence[Pair],
    val_pairs: Sequence[Pair],
    out: str | Path,
    params: TrainParams | None = None,
    *,
    config: SamConfig | None = None,
    base_model: str = "",
    data: Any = None,
    progress: Callable[[str], None] | None = print,
) -> TrainResult:
    """Train ``model`` in place on ``train_pairs``, validating on ``val_pairs``.

    Parameters
    ----------
    model : Sam
        A segment_anything ``Sam`` (e.g. from :func:`samlib.models.loading.load_model`).
    train_pairs, val_pairs : sequence of (image, labels)
        ``image`` HxW or HxWxC (any dtype :func:`samlib.image.display.to_rgb8` takes) and
        ``labels`` HxW integer instance labels (0 = background). ``train_pairs`` may be
        a lazy sequence (e.g. synthetic images drawn on demand) when the encoder is not
        frozen; with a frozen encoder every training image is encoded once up front.
    out : path
        Checkpoint to write (samlib format); the sidecar JSON goes next to it.
    params : TrainParams
        Settings; defaults suit fine-tuning a few images on a CPU.
    config : SamConfig
        The model's architecture; default ``model.samlib_info.config``.
    base_model, data
        Recorded in the sidecar (model name, and a description of the data).
    progress : callable(str), optional
        Called with one line per epoch.

    Returns
    -------
    TrainResult
        The model holds the best epoch's weights when this returns.
    """

    params = params or TrainParams()
    params.check()
    if len(train_pairs) == 0 or len(val_pairs) == 0:
        raise ParameterError(
            f"need training and validation images, got {len(train_pairs)} and {len(val_pairs)}"
        )
    info = getattr(model, "samlib_info", None)
    config = config or (info.config if info is not None else None)
    if config is None:
        raise ParameterError("config is required for a model without samlib_info")
    say = progress or (lambda _msg: None)
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    device = torch.device(params.device) if params.device else pick_device()
    model.to(device).train()
    for p in model.image_encoder.parameters():
        p.requires_grad_(not params.freeze_encoder)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=params.weight_decay)

    t0 = time.monotonic()
    val = [prepare_sample(model, im, lb) for im, lb in val_pairs]
    val_embs = _encode_all(model, val)
    cached: list[Sample] = []
    cached_embs: list[torch.Tensor] = []
    if params.freeze_encoder:
        cached = [prepare_sample(model, im, lb) for im, lb in train_pairs]
        cached_embs = _encode_all(model, cached)
        say(f"encoded {len(cached)} training and {len(val)} validation images once")
    steps = params.steps_per_epoch or max(10, math.ceil(len(train_pairs) / params.batch_images))
    total = steps * params.epochs
    result = TrainResult(before=validate(model.eval(), val_embs, val))
    result.best_val_iou = result.before["val_iou"]
    say(f"before training: val IoU {result.best_val_iou:.4f} {result.before}")
    out = Path(out)
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    stale, step = 0, 0
    for epoch in range(1, params.epochs + 1):
        model.train()
        losses = []
        for _ in range(steps):
            idx = rng.integers(len(train_pairs), size=params.batch_images)
            if params.freeze_encoder:
                batch = [cached[i] for i in idx]
                embs = [cached_embs[i] for i in idx]
            else:
                batch = [prepare_sample(model, *train_pairs[int(i)]) for i in idx]
                embs = _encode(model, batch, grad=True)
            for g in opt.param_groups:
                g["lr"] = params.lr * _lr_factor(step, total, params.warmup_steps)
            loss = sum(
                train_step(
                    model,
                    e,
                    s,
                    rng,
                    n_prompts=params.n_prompts,
                    n_corrections=params.n_corrections,
                    n_background=params.n_background,
                    touching_weight=params.touching_weight,
                    focal_weight=params.focal_weight
                    * _ramp(step - params.focal_delay_steps, params.focal_ramp_steps),
                    bce_weight=params.bce_weight,
                )
                for e, s in zip(embs, batch, strict=True)
            ) / len(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            losses.append(loss.item())
            step += 1
        model.eval()
        if not params.freeze_encoder:
            val_embs = _encode_all(model, val)
        metrics = validate(model, val_embs, val)
        row = {"epoch": epoch, "loss": float(np.mean(losses)), **metrics}
        row["seconds"] = round(time.monotonic() - t0, 1)
        result.history.append(row)
        improved = metrics["val_iou"] > result.best_val_iou
        say(
            f"epoch {epoch}/{params.epochs} loss {row['loss']:.4f} val IoU "
            f"{metrics['val_iou']:.4f} (point {metrics['point_iou']:.3f}, box "
            f"{metrics['box_iou']:.3f}){' *' if improved else ''} {row['seconds']:.0f}s"
        )
        if improved:
            result.best_val_iou, result.best_epoch, stale = metrics["val_iou"], epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            _save(model, best_state, out, config, result, params, base_model, data, t0)
        else:
            stale += 1
        if stale >= params.patience:
            say(f"no improvement for {stale} epochs: stopping early")
            break
        if params.max_minutes and time.monotonic() - t0 > 60 * params.max_minutes:
            say(f"time limit of {params.max_minutes} min reached: stopping")
            break
    model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.monotonic() - t0
    result.checkpoint = _save(model, best_state, out, config, result, params, base_model, data, t0)
    return result


def _save(model, state, out, config, result, params, base_model, data, t0) -> Path:
    meta = {
        "base_model": base_model,
        "data": data,
        "params": asdict(params),
        "metrics": {
            "before": result.before,
            "best_epoch": result.best_epoch,
            "best_val_iou": result.best_val_iou,
            "history": result.history,
        },
        "train_seconds": round(time.monotonic() - t0, 1),
    }
    current = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    path = save_checkpoint(model, out, config, extra={"training": meta})
    model.load_state_dict(current)
    write_sidecar(path, meta)
    return path


def _read_pairs(images: Sequence[str], labels: Sequence[str]) -> list[Pair]:
    if len(images) != len(labels):
        raise ParameterError(f"{len(images)} images but {len(labels)} label images")
    pairs = []
    for im, lb in zip(images, labels, strict=True):
        lab = read_image(lb).data[0, :, :, 0]
        if not np.issubdtype(lab.dtype, np.integer):
            raise ParameterError(f"{lb}: labels must be integers, got {lab.dtype}")
        pairs.append((to_rgb8(read_image(im)), lab.astype(np.int32)))
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m samlib train``: fine-tune a model on annotated images (see ``--help``).

    Errors propagate: ``samlib train`` (:func:`samlib.cli.parser.main`) shows them in one line.
    """

    ap = argparse.ArgumentParser(
        prog="python -m samlib train",
        description="Fine-tune a SAM model on images with instance labels (0 = background).",
    )
    ap.add_argument("--model", default=None, help="registry name or checkpoint path")
    ap.add_argument("--image", action="append", required=True, help="training image (repeat)")
    ap.add_argument("--labels", action="append", required=True, help="its label image (repeat)")
    ap.add_argument("--val-image", action="append", default=[], help="validation image")
    ap.add_argument("--val-labels", action="append", default=[], help="its label image")
    ap.add_argument(
        "--val-fraction",
        type=float,
        default=0.25,
        help="share of --image pairs held out when no --val-image is given",
    )
    ap.add_argument("--out", required=True, help="checkpoint to write (.pt); sidecar .json")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--steps-per-epoch", type=int, default=None)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--prompts", type=int, default=8, help="objects prompted per image and step")
    ap.add_argument("--patience", type=int, default=4)
    ap.add_argument(
        "--touching-weight",
        type=float,
        default=1.0,
        help="prompt objects that touch another this many times as often (crowded images)",
    )
    ap.add_argument("--focal-weight", type=float, default=20.0, help="SAM: 20; 0 = dice only")
    ap.add_argument("--unfreeze-encoder", action="store_true", help="train the encoder too")
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    name = args.model or default_model_name()
    pairs = _read_pairs(args.image, args.labels)
    val_pairs = _read_pairs(args.val_image, args.val_labels)
    names = {"train": list(args.image), "val": list(args.val_image)}
    if not val_pairs:
        if len(pairs) < 2:
            raise ParameterError("give --val-image/--val-labels, or at least two --image")
        order = np.random.default_rng(args.seed).permutation(len(pairs))
        n_val = min(len(pairs) - 1, max(1, round(args.val_fraction * len(pairs))))
        val_pairs = [pairs[i] for i in order[:n_val]]
        names = {
            "train": [args.image[i] for i in order[n_val:]],
            "val": [args.image[i] for i in order[:n_val]],
        }
        pairs = [pairs[i] for i in order[n_val:]]
    params = TrainParams(
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        lr=args.lr,
        n_prompts=args.prompts,
        patience=args.patience,
        touching_weight=args.touching_weight,
        focal_weight=args.focal_weight,
        freeze_encoder=not args.unfreeze_encoder,
        seed=args.seed,
        max_minutes=args.max_minutes,
        device=args.device,
    )
    model = load_model(name, device=args.device)
    res = train(
        model,
        pairs,
        val_pairs,
        args.out,
        params,
        base_model=name,
        data=names,
        progress=lambda m: print(m, file=sys.stderr, flush=True),
    )
    print(
        json.dumps(
            {
                "checkpoint": str(res.checkpoint),
                "best_epoch": res.best_epoch,
                "before": res.before,
                "best_val_iou": res.best_val_iou,
                "seconds": round(res.seconds, 1),
            },
            indent=2,
        )
    )
    return 0
