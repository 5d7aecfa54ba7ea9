"""Train the bundled small demo model to follow prompts, from scratch, on synthetic nuclei.

Everything follows from ``--seed``: the synthetic fluorescence images (samlib.synth,
DSB2018-like nuclei of radius 4-11 px at 256 px), the initial weights and the prompts.
The DSB2018 image is never used. Each step encodes ``--batch-images`` images once and
decodes ``--n-prompts`` prompts per image (half one random point, with SAM's three
outputs and the best one trained, half a jittered box), which gives the decoder many
prompt-to-object examples per encoder pass. Loss on the 256 x 256 low-resolution masks:
pixel BCE + positive-pixel BCE + Dice, plus the IoU head's squared error. AdamW with
linear warm-up and cosine decay over ``--steps``; the checkpoint with the best
validation IoU (synthetic held-out images) is kept. A second stage continues from the
first (``--init``) with new images, a correction click after each prompt (the previous
logits as mask input, as in SAM's interactive training) and points on the background,
which teach the IoU head that a mask matching no object is poor.

The bundled model (one CPU thread, 20 + 102 minutes)::

    .venv/bin/python scripts/train_small_prompts.py --seed 0 --steps 800 \
        --out /tmp/small_cnn_stage1.pt
    .venv/bin/python scripts/train_small_prompts.py --seed 1 --steps 2200 --lr 1e-3 \
        --val-every 200 --init /tmp/small_cnn_stage1.pt --n-background 4 --corrections 1 \
        --out samlib/weights/small_cnn.pt
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from samlib.arch import build_sam  # noqa: E402
from samlib.checkpoints import save_checkpoint  # noqa: E402
from samlib.models import load_model  # noqa: E402
from samlib.small_encoder import SMALL_CNN, sharpen_prompt_positions  # noqa: E402
from samlib.synth import synth_image  # noqa: E402
from samlib.train import write_sidecar  # noqa: E402
from samlib.train_prompts import (  # noqa: E402
    correction_points,
    dice_loss,
    jitter_boxes,
    mask_iou,
    prepare_sample,
    sample_points,
)
from samlib.train_step import _decode, background_loss, validate  # noqa: E402

RADIUS = (4.0, 11.0)


def _loss(logits, iou, target):
    """Best-of-outputs mask loss plus the IoU head's error for (K, M, L, L) logits."""
    t = target[:, None].expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none").flatten(-2).mean(-1)
    pos = F.binary_cross_entropy_with_logits(logits, t, weight=t, reduction="none")
    pos = pos.flatten(-2).sum(-1) / t.flatten(-2).sum(-1).clamp(min=1)
    per = bce + 0.2 * pos + dice_loss(logits, t)
    best = per.argmin(1)
    real = mask_iou(logits.detach() > 0, t > 0.5)
    return per.gather(1, best[:, None]).mean() + F.mse_loss(iou, real)


def _corrections(model, emb, s, target, logits, iou, points, boxes, rounds, rng):
    """SAM's interactive rounds: a click from the error region, previous logits as mask input."""
    loss = torch.zeros(())
    scale = SMALL_CNN.img_size / target.shape[-1]
    pts, lab = (None, None) if points is None else points
    for _ in range(rounds):
        best = iou.detach().argmax(1)
        prev = logits[torch.arange(len(best)), best][:, None].detach()
        cp, cl = correction_points(prev[:, 0] > 0, target > 0.5, rng, scale)
        pts = cp if pts is None else np.concatenate([pts, cp], 1)
        lab = cl if lab is None else np.concatenate([lab, cl], 1)
        logits, iou = _decode(model, emb, (pts, lab), boxes, prev, False)
        loss = loss + _loss(logits, iou, target)
    return loss


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup-steps", type=int, default=50)
    ap.add_argument("--batch-images", type=int, default=2)
    ap.add_argument("--n-prompts", type=int, default=24)
    ap.add_argument("--val-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="samlib/weights/small_cnn.pt")
    ap.add_argument("--init", default=None, help="continue from this checkpoint (samlib format)")
    ap.add_argument("--n-background", type=int, default=0, help="background points per image")
    ap.add_argument("--corrections", type=int, default=0, help="correction clicks per prompt")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = build_sam(SMALL_CNN)
    sharpen_prompt_positions(model, seed=args.seed)
    if args.init:
        model.load_state_dict(load_model(args.init, device="cpu").state_dict())
    base_seed = args.seed * 10_000_000

    def make(i: int):
        n = int(rng.integers(20, 90))
        img, lab = synth_image(base_seed + i, kind="fluorescence", n_objects=n, radius=RADIUS)
        return prepare_sample(model, img, lab)

    val = [make(5_000_000 + i) for i in range(6)]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    history: list[dict] = []
    best, best_state, best_step = -1.0, None, 0
    t0 = time.time()

    def evaluate(step: int) -> None:
        nonlocal best, best_state, best_step
        model.eval()
        with torch.no_grad():
            r = validate(model, [model.image_encoder(s.x[None]) for s in val], val)
        model.train()
        history.append({"step": step, **r, "seconds": round(time.time() - t0, 1)})
        print("val", history[-1], flush=True)
        if r["val_iou"] > best:
            best, best_step = r["val_iou"], step
            best_state = {k: v.clone() for k, v in model.state_dict().items()}

    model.train()
    for step in range(args.steps):
        warm = min(1.0, (step + 1) / args.warmup_steps)
        lr = args.lr * warm * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        samples = [make(step * args.batch_images + j) for j in range(args.batch_images)]
        embs = model.image_encoder(torch.stack([s.x for s in samples]))
        loss = torch.zeros(())
        for b, s in enumerate(samples):
            if len(s.ids) == 0:
                continue
            chosen = rng.choice(len(s.ids), size=min(args.n_prompts, len(s.ids)), replace=False)
            half = (len(chosen) + 1) // 2
            for group, use_box in ((chosen[:half], False), (chosen[half:], True)):
                if len(group) == 0:
                    continue
                ids = torch.as_tensor(s.ids[group])[:, None, None]
                target = (s.low[None] == ids).float()
                if use_box:
                    boxes = jitter_boxes(s.boxes[group], rng, SMALL_CNN.img_size)
                    logits, iou = _decode(model, embs[b : b + 1], None, boxes, None, False)
                else:
                    pts = sample_points(s, group, rng)
                    lab = np.ones(pts.shape[:2], np.float32)
                    logits, iou = _decode(model, embs[b : b + 1], (pts, lab), None, None, True)
                loss = loss + _loss(logits, iou, target)
                loss = loss + _corrections(
                    model,
                    embs[b : b + 1],
                    s,
                    target,
                    logits,
                    iou,
                    None if use_box else (pts, lab),
                    boxes if use_box else None,
                    args.corrections,
                    rng,
                )
            loss = loss + background_loss(model, embs[b : b + 1], s, args.n_background, rng)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % 25 == 0:
            print(f"step {step + 1} {time.time() - t0:.0f}s lr {lr:.2e} loss {loss.item():.3f}")
        if (step + 1) % args.val_every == 0 or step + 1 == args.steps:
            evaluate(step + 1)
    model.load_state_dict(best_state)
    seconds = round(time.time() - t0, 1)
    save_checkpoint(model, args.out, SMALL_CNN)
    info = {
        "base_model": args.init or "scratch (samlib.small_encoder.SMALL_CNN)",
        "recipe": "scripts/train_small_prompts.py",
        "data": {
            "train": {
                "generator": "samlib.synth.synth_image",
                "kind": "fluorescence",
                "seed": base_seed,
                "radius": list(RADIUS),
                "n_objects": [20, 90],
            },
            "val": {
                "generator": "samlib.synth.synth_image",
                "seed": base_seed + 5_000_000,
                "length": len(val),
            },
        },
        "params": vars(args),
        "metrics": {"best_step": best_step, "best_val_iou": best, "history": history},
        "train_seconds": seconds,
    }
    write_sidecar(Path(args.out), info)
    print(f"best step {best_step}: val IoU {best:.4f}; {seconds / 60:.1f} min; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
