"""Train the bundled small demo model from scratch on synthetic nuclei, with samlib.training.loop.

Everything follows from ``--seed``: the initial weights, the synthetic fluorescence images
(``samlib.datasets.synth.nuclei_image``: random size, scale and crowding, touching colonies, a few
saturating nuclei) and the prompts. The DSB2018 image is never used. The whole model
learns (``freeze_encoder=False``): each step encodes ``--batch-images`` fresh images and,
per image, prompts ``--prompts`` objects (half a random interior point with SAM's three
outputs, half a jittered box), adds ``--corrections`` correction clicks with the previous
logits as mask input, and ``--background`` points on the background for the IoU head.
Loss: cross-entropy + Dice on the 256 x 256 low-resolution masks (the best of the three
outputs for a point), plus the IoU head's squared error. AdamW, linear warm-up, cosine
decay; validation IoU (most interior point, tight box) on synthetic images of other seeds
after every epoch; the best epoch is written, with its sidecar JSON.

``--init CHECKPOINT`` starts from trained weights instead (a further stage), and ``--glow`` /
``--defocus`` / ``--touching`` / ``--min-axis-ratio`` widen the images (see ``nuclei_image``).
The bundled model is trained in stages (two CPU threads); see ``samlib/weights/README.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from samlib.datasets.synth import NucleiDataset
from samlib.models.arch import build_sam
from samlib.models.loading import load_model
from samlib.models.small_encoder import SMALL_CNN, sharpen_prompt_positions
from samlib.training.loop import TrainParams, train

from nuclei_options import add_nuclei_options, nuclei_options

VAL_OFFSET = 5_000_000  # validation seeds start here, far from any training seed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--steps-per-epoch", type=int, default=250)
    ap.add_argument("--batch-images", type=int, default=6)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup-steps", type=int, default=100)
    ap.add_argument("--prompts", type=int, default=8, help="objects prompted per image")
    ap.add_argument("--corrections", type=int, default=1)
    ap.add_argument("--background", type=int, default=3)
    ap.add_argument(
        "--touching-weight",
        type=float,
        default=1.0,
        help="draw objects that touch another this many times as often",
    )
    ap.add_argument("--val-images", type=int, default=8)
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--init", default=None, help="start from this checkpoint, not from scratch")
    add_nuclei_options(ap)
    ap.add_argument("--out", default="samlib/weights/small_cnn.pt")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.init:
        model = load_model(args.init, device="cpu")
        base_model = f"{Path(args.init).name} (SMALL_CNN, trained)"
    else:
        model = build_sam(SMALL_CNN)
        sharpen_prompt_positions(model, seed=args.seed)
        base_model = "scratch (samlib.models.small_encoder.SMALL_CNN)"
    base = args.seed * 10_000_000
    options = nuclei_options(args)
    train_set = NucleiDataset(VAL_OFFSET, seed=base, **options)
    val_set = NucleiDataset(args.val_images, seed=base + VAL_OFFSET, **options)
    params = TrainParams(
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_images=args.batch_images,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        n_prompts=args.prompts,
        n_corrections=args.corrections,
        n_background=args.background,
        touching_weight=args.touching_weight,
        focal_weight=0.0,
        bce_weight=1.0,
        freeze_encoder=False,
        patience=args.epochs,
        seed=args.seed,
        max_minutes=args.max_minutes,
        device="cpu",
    )
    res = train(
        model,
        train_set,
        [val_set[i] for i in range(len(val_set))],
        args.out,
        params,
        config=SMALL_CNN,
        base_model=base_model,
        data={
            "train": train_set.describe(),
            "val": val_set.describe(),
            "recipe": "scripts/train_small_prompts.py",
        },
    )
    print(
        f"best epoch {res.best_epoch}: val IoU {res.best_val_iou:.4f}; "
        f"{res.seconds / 60:.1f} min; wrote {res.checkpoint}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
