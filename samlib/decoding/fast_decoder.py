"""SAM's mask decoder for one prompt set, reorganised for speed (same weights, same maths).

The stock decoder spends most of its time on the 4096 image tokens: projecting them to
keys, values and queries for every prompt, and running two transposed convolutions
through a slow generic kernel. This module computes the same function with far fewer
operations:

- the first layer's image projections are computed once per image (see
  :mod:`samlib.decoding.prompt_decoder`);
- attention between a handful of prompt tokens and the image tokens is *reassociated*:
  ``softmax((x Wk^T) q) (x Wv^T)`` becomes ``softmax(x (Wk^T q)) x Wv^T``, so the large
  matrix products have 8 x T columns (8 heads, T tokens) instead of 128, and the per-query
  key bias, which softmax ignores, is dropped;
- the 2x2, stride-2 transposed convolutions are per-pixel matrix products in a
  pixel-major layout where LayerNorm2d is a plain ``layer_norm`` over the last axis.

Floating-point sums are taken in another order, so logits differ from the stock decoder's
by rounding (about 1e-6 of their range); the tests check the logits to 1e-5 and that a
mask pixel differs only where the stock logit is within rounding of the threshold. Use
``samlib.prompts.prompting.predict(..., exact=True)`` where bit-identical results are required.
"""

from __future__ import annotations

import math

import torch
from segment_anything.modeling import Sam
from segment_anything.modeling.transformer import Attention
from torch.nn import functional as F

from samlib.decoding.decoder import split_heads, token_self_attention
from samlib.decoding.image_terms import image_terms
from samlib.workspace import buffer

__all__ = ["decode_fast"]


def _plus_pe(x: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    """Keys ``x + pe`` of image tokens, in a scratch buffer."""
    return torch.add(x, pe, out=buffer("x_pe", x.shape, x))


def _tokens_to_image(
    attn: Attention,
    q_in: torch.Tensor,
    spans: list[tuple[int, int]],
    xs: list[torch.Tensor],
    pe: torch.Tensor,
) -> torch.Tensor:
    """Attention of B x T tokens (queries) over their chunks' N image tokens.

    ``q_in`` is (B, T, D); ``xs`` holds the image tokens (b, N, D) of the prompt sets of
    each span, with keys x + ``pe``. The token-side projections run on all B at once.
    Returns (B, T, D).
    """
    h = attn.num_heads
    c = attn.internal_dim // h
    b, t, _ = q_in.shape
    q = split_heads(attn.q_proj(q_in), h)  # (B, H, T, c)
    wk = attn.k_proj.weight.view(h, c, -1)  # (H, c, D)
    g = (q @ wk).reshape(b, h * t, -1) / math.sqrt(c)  # (B, H*T, D)
    # q.bk is constant along each row of scores, which softmax ignores: dropped
    parts = []
    for (s, e), x in zip(spans, xs, strict=True):
        scores = g[s:e] @ _plus_pe(x, pe).transpose(-1, -2)
        parts.append(torch.softmax(scores, dim=-1) @ x)
    r = torch.cat(parts)
    r = r.view(b, h, t, -1)  # (B, H, T, D); rows of a sum to 1, so bv adds as is
    wv = attn.v_proj.weight.view(h, c, -1)
    out = r @ wv.transpose(1, 2) + attn.v_proj.bias.view(h, 1, c)  # (B, H, T, c)
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, -1))


class _ImageToTokens:
    """Attention of N image tokens over the T tokens of their prompt set: the token-side
    terms for all B prompt sets at once (:meth:`__init__`), then one chunk at a time."""

    def __init__(self, attn: Attention, k_in: torch.Tensor, v_in: torch.Tensor) -> None:
        """``k_in`` and ``v_in`` are (B, T, D)."""
        h = attn.num_heads
        c = attn.internal_dim // h
        k = split_heads(attn.k_proj(k_in), h)  # (B, H, T, c)
        v = split_heads(attn.v_proj(v_in), h)
        b, _, t, _ = k.shape
        self.attn, self.k, self.h, self.c, self.t = attn, k, h, c, t
        wq = attn.q_proj.weight.view(h, c, -1)  # (H, c, D)
        self.g = (k @ wq).transpose(1, 2).reshape(b, t * h, -1) / math.sqrt(c)  # (B,T*H,D)
        self.cq = (k @ attn.q_proj.bias.view(h, c, 1)).transpose(1, 2) / math.sqrt(c)
        wo = attn.out_proj.weight.view(-1, h, c).transpose(0, 1)  # (H, D, c)
        self.m = (v @ wo.transpose(1, 2)).transpose(1, 2).reshape(b, t * h, -1)  # (B,T*H,D)

    def __call__(
        self, s: int, e: int, xp: torch.Tensor | None, q_img: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Output (e-s, N, D), in a scratch buffer, for prompt sets s:e whose image tokens
        have keys ``xp`` (e-s, N, D), or for the first layer's projected ``q_img`` (N, H*c).
        """
        h, c, t, b = self.h, self.c, self.t, e - s
        # Scores are laid out (b, T, H, N) so that the softmax over the T tokens runs along
        # an outer axis, many times faster than a softmax over a short last axis.
        if q_img is not None:
            n = q_img.shape[0]
            qh = q_img.reshape(n, h, c).permute(1, 2, 0)  # (H, c, N)
            scores = (self.k[s:e] @ qh).transpose(1, 2) / math.sqrt(c)  # (b, T, H, N)
        else:
            scores = (self.g[s:e] @ xp.transpose(-1, -2)).view(b, t, h, -1) + self.cq[s:e]
        a = torch.softmax(scores, dim=1).reshape(b, t * h, -1)  # (b, T*H, N)
        m = self.m[s:e]
        out = buffer("i2t_out", (b, a.shape[-1], m.shape[-1]), m)
        return torch.baddbmm(self.attn.out_proj.bias, a.transpose(1, 2), m, out=out)


def _act_(act: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(x)``, in place for GELU (x is a temporary)."""
    if type(act) is torch.nn.GELU:
        return torch.ops.aten.gelu_(x, approximate=act.approximate)
    return act(x)


def _upscale(dec, keys: torch.Tensor, hw: tuple[int, int], hyper: torch.Tensor) -> torch.Tensor:
    """``output_upscaling`` + hypernetwork product, per pixel.

    ``keys`` is (B, N, D) image tokens and ``hyper`` (B, M, C); returns (B, M, 4h, 4w).
    """
    conv1, ln, act1, conv2, act2 = dec.output_upscaling
    b, n, _ = keys.shape
    c1, c2 = conv1.out_channels, conv2.out_channels
    # out[co, 2i+a, 2j+b] = sum_ci in[ci, i, j] W[ci, co, a, b] + bias[co]
    w1 = conv1.weight.permute(0, 2, 3, 1).reshape(conv1.in_channels, 4 * c1)
    y = buffer("up1", (b * n, 4 * c1), keys)
    torch.addmm(conv1.bias.repeat(4), keys.reshape(b * n, -1), w1, out=y)
    y = _act_(act1, F.layer_norm(y.view(b * n, 4, c1), (c1,), ln.weight, ln.bias, ln.eps))
    w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
    z = buffer("up2", (4 * b * n, 4 * c2), keys)
    z = _act_(act2, torch.addmm(conv2.bias.repeat(4), y.view(4 * b * n, c1), w2, out=z))
    logits = hyper @ z.view(b, 16 * n, c2).transpose(1, 2)  # columns (i, j, a, b, a', b')
    h, w = hw
    m = hyper.shape[1]
    logits = logits.view(b, m, h, w, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
    return logits.reshape(b, m, 4 * h, 4 * w)


@torch.no_grad()
def decode_fast(
    model: Sam,
    features: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor | None,
    mask_slice: slice = slice(None),
    iou_floor: float | None = None,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask decoder outputs for B prompt sets, as
    :func:`samlib.decoding.prompt_decoder.decode` gives
    for one; only prompt sets with a mask above ``iou_floor`` are upscaled.

    ``sparse`` is (B, T, C) prompt embeddings and ``dense`` None (no mask input, the
    image-only terms are cached) or (B, C, h, w); ``mask_slice`` selects which of the
    1 + num_multimask_outputs mask tokens to compute (M of them). The token-side layers
    run on all B prompt sets at once, the image-side work ``chunk`` prompt sets at a time
    (default: all). Returns the logits (K, M, 4h, 4w) of the K prompt sets with a
    selected mask's predicted IoU above ``iou_floor`` (all B if None), the predicted IoUs
    (B, M) and the (K,) indices of those prompt sets.
    """
    dec = model.mask_decoder
    tf = dec.transformer
    b = sparse.shape[0]
    chunk = chunk or b
    spans = [(s, min(s + chunk, b)) for s in range(0, b, chunk)]
    out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
    tokens = torch.cat([out_tokens.expand(b, -1, -1), sparse], dim=1)  # (B, T, D)
    cached = image_terms(model, features) if dense is None else None
    _, c, h, w = features.shape
    if cached is not None:
        pe = cached.pe
        xs: list[torch.Tensor | None] = [None] * len(spans)  # (N, D) shared until layer 0 ends
    else:
        x = (features + dense).flatten(2).transpose(1, 2).contiguous()  # (B, N, D)
        pe = model.prompt_encoder.get_dense_pe()[0].flatten(1).T.contiguous()
        xs = [x[s:e] for s, e in spans]

    queries = tokens
    for layer in tf.layers:
        queries = token_self_attention(layer, queries, tokens)
        q = queries + tokens
        t2i = layer.cross_attn_token_to_image
        if xs[0] is None:
            attn_out = _cached_t2i(t2i, q, cached.t2i_k[0], cached.t2i_v[0])
        else:
            attn_out = _tokens_to_image(t2i, q, spans, xs, pe)
        queries = layer.norm2(queries + attn_out)
        queries = layer.norm3(queries + layer.mlp(queries))
        i2t = _ImageToTokens(layer.cross_attn_image_to_token, queries + tokens, queries)
        for j, (s, e) in enumerate(spans):
            x = xs[j]
            if x is None:
                out = i2t(s, e, None, q_img=cached.i2t_q[0])
                x = cached.x
            else:
                out = i2t(s, e, _plus_pe(x, pe))
            xs[j] = layer.norm4(out.add_(x))  # out is a scratch buffer: x + out in place
    # Only the IoU and mask tokens are read after the final attention (all of them, so that
    # a token's result does not depend on which masks were asked for).
    idx = range(dec.num_mask_tokens)[mask_slice]
    need = slice(0, 1 + dec.num_mask_tokens)
    attn_out = _tokens_to_image(
        tf.final_attn_token_to_image, (queries + tokens)[:, need], spans, xs, pe
    )
    hs = tf.norm_final_attn(queries[:, need] + attn_out)  # (B, 1 + num_mask_tokens, D)

    iou = dec.iou_prediction_head(hs[:, 0])[:, mask_slice]
    hyper = torch.stack([dec.output_hypernetworks_mlps[i](hs[:, 1 + i]) for i in idx], dim=1)
    keep = torch.ones(b, dtype=torch.bool, device=iou.device)
    if iou_floor is not None:
        keep = (iou > iou_floor).any(dim=1)
    low = []
    for (s, e), x in zip(spans, xs, strict=True):
        sel = torch.nonzero(keep[s:e]).flatten()
        if len(sel) == e - s:  # all of the chunk: no copy of its image tokens
            low.append(_upscale(dec, x, (h, w), hyper[s:e]))
        elif len(sel):
            low.append(_upscale(dec, x[sel], (h, w), hyper[s:e][sel]))
    sel = torch.nonzero(keep).flatten()
    if not low:
        return hs.new_zeros((0, len(idx), 4 * h, 4 * w)), iou, sel
    return torch.cat(low), iou, sel


def _cached_t2i(
    attn: Attention, q_in: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """Token-to-image attention of (B, T, D) tokens with precomputed (N, H*c) image keys and
    values. The B x T queries of a head are one matrix, so the shared keys and values are
    read as they are, never expanded to B copies."""
    h = attn.num_heads
    c = attn.internal_dim // h
    b, t, _ = q_in.shape
    q = attn.q_proj(q_in).view(b * t, h, c).transpose(0, 1) / math.sqrt(c)  # (H, B*T, c)
    a = torch.softmax(q @ k.view(-1, h, c).permute(1, 2, 0), dim=-1)  # (H, B*T, N)
    out = a @ v.view(-1, h, c).transpose(0, 1)  # (H, B*T, c)
    return attn.out_proj(out.transpose(0, 1).reshape(b, t, h * c))
