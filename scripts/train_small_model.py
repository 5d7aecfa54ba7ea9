"""Train the bundled small demo model (SAM architecture, CNN encoder) from scratch.

Everything follows from ``--seed``: the synthetic training and validation images
(samlib.synth), the initial weights and the prompts. The DSB2018 image is never used.

    .venv/bin/python scripts/train_small_model.py --seed 0 --max-minutes 42 \
        --out samlib/weights/small_cnn.pt
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from samlib.arch import build_sam  # noqa: E402
from samlib.small_encoder import SMALL_CNN, sharpen_prompt_positions  # noqa: E402
from samlib.synth import SynthDataset  # noqa: E402
from samlib.train import TrainParams, train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=32)
    ap.add_argument("--steps-per-epoch", type=int, default=25)
    ap.add_argument("--batch-images", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--focal-weight", type=float, default=10.0)
    ap.add_argument("--focal-delay-steps", type=int, default=250)
    ap.add_argument("--warmup-steps", type=int, default=50)
    ap.add_argument("--init", default=None, help="start from this checkpoint's weights")
    ap.add_argument(
        "--curriculum-epochs",
        type=int,
        default=8,
        help="first train on images with few large objects for this many epochs",
    )
    ap.add_argument("--out", default="samlib/weights/small_cnn.pt")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = build_sam(SMALL_CNN)
    sharpen_prompt_positions(model, seed=args.seed)
    if args.init:
        from samlib.checkpoints import read_checkpoint

        model.load_state_dict(read_checkpoint(args.init)[0])
    train_set = SynthDataset(1_000_000, seed=args.seed * 10_000_000)
    val_set = SynthDataset(12, seed=args.seed * 10_000_000 + 5_000_000)
    params = TrainParams(
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_images=args.batch_images,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        n_prompts=args.n_prompts,
        n_corrections=1,
        n_background=2,
        focal_weight=args.focal_weight,
        focal_delay_steps=args.focal_delay_steps,
        focal_ramp_steps=200,
        freeze_encoder=False,
        patience=args.epochs,
        seed=args.seed,
        max_minutes=args.max_minutes,
        device="cpu",
    )
    base = "scratch (samlib.small_encoder.SMALL_CNN)"
    if args.curriculum_epochs:
        # Few, large objects first: a fresh decoder otherwise settles on masking every
        # object whatever the prompt; with three big objects that costs too much.
        easy = SynthDataset(
            1_000_000, seed=args.seed * 10_000_000 + 7_000_000, n_objects=3, radius=(18.0, 40.0)
        )
        warm = replace(params, epochs=args.curriculum_epochs, max_minutes=None)
        data = {"train": easy.describe(), "val": val_set.describe()}
        train(
            model,
            easy,
            val_set,
            args.out,
            warm,
            config=SMALL_CNN,
            base_model=base,
            data=data,
            progress=lambda m: print("curriculum:", m, flush=True),
        )
        params = replace(params, warmup_steps=10)
        base += f" after {args.curriculum_epochs} curriculum epochs (3 objects, radius 18-40)"
    data = {"train": train_set.describe(), "val": val_set.describe()}
    result = train(
        model,
        train_set,
        val_set,
        args.out,
        params,
        config=SMALL_CNN,
        base_model=base,
        data=data,
        progress=lambda m: print(m, flush=True),
    )
    print(
        f"best epoch {result.best_epoch}: val IoU {result.best_val_iou:.4f}; "
        f"{result.seconds / 60:.1f} min; wrote {result.checkpoint}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
