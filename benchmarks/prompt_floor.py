"""Time the stock kernels that a bit-identical one-prompt decode must run, at SAM's shapes.

Identical masks need SAM's own kernels on SAM's tensor shapes (other layouts round
differently). This sums what those kernels alone cost for one point prompt on a vit_b-sized
decoder (256-channel, 64 x 64 image embedding, three masks resized to a 512 x 512 image),
to compare with the time that a given speed-up over stock leaves.

    .venv/bin/python benchmarks/prompt_floor.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d


def ms(fn: Callable[[], object], n: int = 200) -> float:
    """Mean milliseconds per call after a warm-up."""
    for _ in range(20):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e3


@torch.no_grad()
def main() -> int:
    torch.manual_seed(0)
    tokens = torch.randn(1, 4096, 256)  # image tokens
    pos = torch.randn(1, 4096, 256)
    half = torch.randn(1, 4096, 128)  # attention width (downsample 2)
    w_in, b_in = torch.randn(128, 256), torch.randn(128)
    w_out, b_out = torch.randn(256, 128), torch.randn(256)
    scores = torch.randn(1, 8, 4096, 7)  # image-to-token attention scores
    up1 = torch.nn.ConvTranspose2d(256, 64, 2, 2)
    up2 = torch.nn.ConvTranspose2d(64, 32, 2, 2)
    emb = torch.randn(1, 256, 64, 64).contiguous(memory_format=torch.channels_last)
    mid = torch.randn(1, 64, 128, 128)
    mid_cl = mid.contiguous(memory_format=torch.channels_last)
    last = torch.randn(1, 32, 256, 256)
    norm, norm2d = torch.nn.LayerNorm(256), LayerNorm2d(64)
    low = torch.randn(1, 3, 256, 256)
    full = torch.randn(1, 3, 1024, 1024)
    parts = {
        "five 256->128 linears over the image tokens": 5 * ms(lambda: F.linear(tokens, w_in, b_in)),
        "two 128->256 linears over the image tokens": 2 * ms(lambda: F.linear(half, w_out, b_out)),
        "two softmaxes over 7 tokens (stock layout)": 2 * ms(lambda: torch.softmax(scores, -1)),
        "transposed convolution 256->64 (channels-last)": ms(lambda: up1(emb)),
        "transposed convolution 64->32 (channels-last)": ms(lambda: up2(mid_cl)),
        "upsample three masks 256 -> 1024": ms(
            lambda: F.interpolate(low, (1024, 1024), mode="bilinear", align_corners=False)
        ),
        "resize three masks 1024 -> 512": ms(
            lambda: F.interpolate(full, (512, 512), mode="bilinear", align_corners=False)
        ),
        "two LayerNorms over the image tokens": 2 * ms(lambda: norm(tokens)),
        "six adds over the image tokens": 6 * ms(lambda: tokens + pos),
        "LayerNorm2d on 64 x 128 x 128": ms(lambda: norm2d(mid)),
        "two GELUs (64 x 128 x 128, 32 x 256 x 256)": ms(lambda: F.gelu(mid))
        + ms(lambda: F.gelu(last)),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, value in parts.items():
        print(f"{name:50s} {value:6.2f} ms")
    print(f"{'sum':50s} {sum(parts.values()):6.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
