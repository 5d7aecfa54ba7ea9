"""Fine-tune a model on ONE annotated image and measure it on a SECOND image of the same kind.

Both images come from samlib.datasets.synth with the same settings (a style the demo model was not
specialised for) and different seeds. The image encoder stays frozen (embeddings are
computed once), so this runs in a few minutes on a CPU. Prints before/after figures as JSON.

    .venv/bin/python scripts/finetune_demo.py --out /tmp/finetuned.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from samlib.datasets.synth import synth_image
from samlib.evaluation.benchmark import prompt_ious
from samlib.image.display import to_rgb8
from samlib.models.loading import load_model
from samlib.training.loop import TrainParams, train


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--kind", default="brightfield")
    ap.add_argument("--radius", type=float, nargs=2, default=(14.0, 22.0))
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--train-seed", type=int, default=424242)
    ap.add_argument("--val-seed", type=int, default=434343)
    ap.add_argument("--test-seed", type=int, default=444444)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--steps-per-epoch", type=int, default=20)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--focal-weight", type=float, default=0.0)
    ap.add_argument("--out", default="/tmp/finetuned.pt")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = (args.size, args.size)
    make = lambda seed: synth_image(seed, shape, kind=args.kind, radius=tuple(args.radius))  # noqa: E731
    train_img, train_lab = make(args.train_seed)
    val_img, val_lab = make(args.val_seed)
    test_img, test_lab = make(args.test_seed)  # not used for early stopping
    test_rgb = to_rgb8(test_img)
    model = load_model(args.model, device="cpu")
    val_rgb = to_rgb8(val_img)
    before = {"val": prompt_ious(model, val_rgb, val_lab)}
    before["test"] = prompt_ious(model, test_rgb, test_lab)
    params = TrainParams(
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        lr=args.lr,
        warmup_steps=10,
        n_prompts=8,
        focal_weight=args.focal_weight,
        patience=4,
        device="cpu",
    )
    data = {
        "generator": "samlib.datasets.synth.synth_image",
        "kind": args.kind,
        "shape": list(shape),
        "radius": list(args.radius),
        "train_seed": args.train_seed,
        "val_seed": args.val_seed,
    }
    t0 = time.monotonic()
    res = train(
        model,
        [(to_rgb8(train_img), train_lab)],
        [(val_rgb, val_lab)],
        args.out,
        params,
        base_model=args.model,
        data=data,
        progress=lambda m: print(m, file=sys.stderr, flush=True),
    )
    minutes = (time.monotonic() - t0) / 60
    tuned = load_model(args.out, device="cpu")
    after = {"val": prompt_ious(tuned, val_rgb, val_lab)}
    after["test"] = prompt_ious(tuned, test_rgb, test_lab)
    keys = ("point_miou", "box_miou_unclipped", "box_miou")
    print(
        json.dumps(
            {
                "train_objects": int(train_lab.max()),
                "val_objects": int(val_lab.max()),
                "test_objects": int(test_lab.max()),
                "minutes": round(minutes, 2),
                "best_epoch": res.best_epoch,
                "before": {s: {k: round(before[s][k], 4) for k in keys} for s in before},
                "after": {s: {k: round(after[s][k], 4) for k in keys} for s in after},
                "checkpoint": str(res.checkpoint),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
