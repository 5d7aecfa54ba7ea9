"""Faster image encoders with the same weights: fused attention, reused buffers, optional bfloat16.

:func:`accelerate` swaps the ViT attention of a ``segment_anything`` image encoder for
``torch.nn.functional.scaled_dot_product_attention``, passing SAM's decomposed
relative-position terms as the additive attention mask, a chunk of queries at a time.
The maths is unchanged (the embedding differs from stock by float rounding only, ~1e-6);
the fused kernel avoids materialising and re-reading the attention matrix several times.
The blocks then run with in-place residual sums and GELU, and the large intermediates
(attention masks, q/k/v, MLP activations) are written into buffers kept for one encoder
call (:mod:`samlib.workspace`), since on a CPU paging in fresh memory for them costs a
large share of the time. Both gains are measured in ``benchmarks/README.md``.

Under autograd or autocast the blocks fall back to out-of-place operations.
On CUDA, bfloat16 autocast is enabled only if the embedding of a probe image stays
within cosine similarity :data:`MIN_COSINE` of float32 (bfloat16 is slower on most CPUs,
so it is never used there).
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.modeling.image_encoder import (
    Attention,
    Block,
    get_rel_pos,
    window_partition,
    window_unpartition,
)

from samlib.workspace import buffer, linear_into, workspace

MIN_COSINE = 0.999

__all__ = ["MIN_COSINE", "accelerate", "accelerated", "cosine", "restore", "sdpa_forward"]


def _rel_pos_terms(
    q: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's decomposed relative-position terms: (B*heads, HW, H) and (B*heads, HW, W).

    The additive attention bias of query i and key j is ``th[i, row(j)] + tw[i, col(j)]``.
    """
    h, w = size
    b, _, dim = q.shape
    r_q = q.reshape(b, h, w, dim)
    th = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(h, h, rel_h))
    tw = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(w, w, rel_w))
    return th.reshape(b, h * w, h), tw.reshape(b, h * w, w)


# Queries attended at once. The bias of a chunk is materialised as the attention mask
# (chunk x tokens per head); for SAM's global attention (4,096 tokens, 12 heads) a chunk
# of 1,024 needs 200 MB instead of 800 MB for all queries, and was the fastest measured
# on a CPU, against no chunking and a bias folded into q and k (benchmarks/README.md).
_QUERY_CHUNK = 1024


def _attend_rel_pos(
    self: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Fused attention with the rel-pos bias as the mask, a chunk of queries at a time."""
    th, tw = (t.to(q.dtype) for t in _rel_pos_terms(q, self.rel_pos_h, self.rel_pos_w, size))
    bh, n, _ = q.shape
    h, w = size
    out = buffer("attn_out", q.shape, q)
    for s in range(0, n, _QUERY_CHUNK):
        e = min(n, s + _QUERY_CHUNK)
        if torch.is_grad_enabled():
            mask = th[:, s:e, :, None] + tw[:, s:e, None, :]
        else:
            mask = buffer("attn_mask", (bh, e - s, h, w), q)
            torch.add(th[:, s:e, :, None], tw[:, s:e, None, :], out=mask)
        out[:, s:e] = F.scaled_dot_product_attention(
            q[None, :, s:e], k[None], v[None], attn_mask=mask.view(1, bh, e - s, n)
        )[0]
    return out


def sdpa_forward(self: Attention, x: torch.Tensor) -> torch.Tensor:
    """``image_encoder.Attention.forward`` with a fused attention kernel (same maths).

    ``x`` is (B, H, W, C); returns (B, H, W, C).
    """
    b, h, w, _ = x.shape
    n = self.num_heads
    qkv = linear_into(self.qkv, x, "qkv").view(b, h * w, 3, n, -1).permute(2, 0, 3, 1, 4)
    if torch.is_grad_enabled():
        heads = qkv.reshape(3, b * n, h * w, -1)
    else:
        heads = buffer("qkv_heads", (3, b * n, h * w, qkv.shape[-1]), qkv)
        heads.view(qkv.shape).copy_(qkv)
    q, k, v = heads.unbind(0)
    if self.use_rel_pos:
        out = _attend_rel_pos(self, q, k, v, (h, w))
    else:
        out = F.scaled_dot_product_attention(q[None], k[None], v[None])[0]
    out = out.view(b, n, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return self.proj(out)


def block_forward(self: Block, x: torch.Tensor) -> torch.Tensor:
    """``image_encoder.Block.forward`` with in-place residual sums and GELU, and the MLP's
    activations in reused buffers (same operations; far fewer new pages on a CPU)."""
    if torch.is_grad_enabled():
        return Block.forward(self, x)
    shortcut = x
    x = self.norm1(x)
    if self.window_size > 0:
        size = x.shape[1], x.shape[2]
        x, pad_hw = window_partition(x, self.window_size)
    x = self.attn(x)
    if self.window_size > 0:
        x = window_unpartition(x, self.window_size, pad_hw, size)
    x += shortcut  # x is this block's own new tensor
    mlp = self.mlp
    hidden = linear_into(mlp.lin1, self.norm2(x), "mlp_hidden")
    if type(mlp.act) is torch.nn.GELU:
        torch.ops.aten.gelu_(hidden, approximate=mlp.act.approximate)
    else:
        hidden = mlp.act(hidden)
    x += linear_into(mlp.lin2, hidden, "mlp_out")
    return x


def _in_workspace(forward: Any):
    """``forward`` run inside a :func:`samlib.workspace.workspace` (buffers freed after)."""

    def run(x: torch.Tensor) -> torch.Tensor:
        with workspace():
            return forward(x)

    return run


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two tensors flattened to vectors (float64)."""
    a = a.detach().double().flatten()
    b = b.detach().double().flatten()
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-30))


def _probe(model: Sam) -> torch.Tensor:
    """A deterministic probe image already preprocessed for the encoder (1, 3, S, S)."""
    size = model.image_encoder.img_size
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] / size
    img = np.stack(
        [
            np.sin(9 * xx) * 100 + 128,
            np.cos(7 * yy) * 100 + 128,
            rng.integers(0, 255, (size, size)),
        ],
        axis=0,
    )
    x = torch.as_tensor(img, dtype=torch.float32, device=model.device)[None]
    return model.preprocess(x)


def _bf16_forward(encoder: torch.nn.Module, original: Any):
    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            return original(x).float()

    return forward


def accelerate(model: Sam, *, sdpa: bool = True, bf16: bool | str = "auto") -> dict[str, Any]:
    """Speed up ``model.image_encoder`` in place, keeping the weights and embeddings.

    Parameters
    ----------
    model : Sam
        A ``segment_anything`` SAM (ViT image encoder); other encoders are left alone.
    sdpa : bool
        Use fused scaled-dot-product attention in the ViT blocks.
    bf16 : bool or "auto"
        bfloat16 autocast for the encoder. "auto": only on CUDA and only if the cosine
        similarity to float32 on a probe image is at least :data:`MIN_COSINE`.

    Returns
    -------
    dict
        What was enabled: ``{"sdpa": bool, "bf16": bool, "cosine": float | None}``.
    """
    restore(model)
    enc = model.image_encoder
    blocks = [m for m in enc.modules() if isinstance(m, Attention)]
    info: dict[str, Any] = {"sdpa": False, "bf16": False, "cosine": None}
    if sdpa and blocks:
        for attn in blocks:
            attn.forward = types.MethodType(sdpa_forward, attn)
        for block in enc.modules():
            if isinstance(block, Block):
                block.forward = types.MethodType(block_forward, block)
        enc.forward = _in_workspace(type(enc).forward.__get__(enc))
        info["sdpa"] = True
    use_bf16 = bf16 is True or (bf16 == "auto" and model.device.type == "cuda")
    if use_bf16:
        original = enc.forward
        with torch.no_grad():
            x = _probe(model)
            ref = original(x)
            enc.forward = _bf16_forward(enc, original)
            info["cosine"] = cosine(enc(x), ref)
        if bf16 == "auto" and info["cosine"] < MIN_COSINE:
            enc.forward = original
        else:
            info["bf16"] = True
    model.samlib_accel = info
    return info


def accelerated(model: Sam) -> dict[str, Any] | None:
    """What :func:`accelerate` enabled on this model, or None."""
    return getattr(model, "samlib_accel", None)


def restore(model: Sam) -> None:
    """Undo :func:`accelerate`: the stock encoder code again."""
    enc = model.image_encoder
    if "forward" in vars(enc):
        del enc.forward
    for m in enc.modules():
        if isinstance(m, (Attention, Block)) and "forward" in vars(m):
            del m.forward
    if hasattr(model, "samlib_accel"):
        del model.samlib_accel
