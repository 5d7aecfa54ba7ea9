"""SAM's mask decoder for one prompt set, reorganised for speed (same weights, same maths).

The stock decoder spends most of its time on the 4096 image tokens: projecting them to
keys, values and queries for every prompt, and running two transposed convolutions
through a slow generic kernel. This module computes the same function with far fewer
operations:

- the first layer's image projections are computed once per image (see
  :mod:`samlib.prompt_decoder`);
- attention between a handful of prompt tokens and the image tokens is *reassociated*:
  ``softmax((x Wk^T) q) (x Wv^T)`` becomes ``softmax(x (Wk^T q)) x Wv^T``, so the large
  matrix products have 8 x T columns (8 heads, T tokens) instead of 128, and the per-query
  key bias, which softmax ignores, is dropped;
- the 2x2, stride-2 transposed convolutions are per-pixel matrix products in a
  pixel-major layout where LayerNorm2d is a plain ``layer_norm`` over the last axis.

Floating-point sums are taken in another order, so logits differ from the stock decoder's
by rounding (about 1e-6 of their range); the tests check the logits to 1e-5 and that a
mask pixel differs only where the stock logit is within rounding of the threshold. Use
``samlib.prompts.predict(..., exact=True)`` where bit-identical results are required.
"""

from __future__ import annotations

import math

import torch
from segment_anything.modeling import Sam
from segment_anything.modeling.transformer import Attention
from torch.nn import functional as F

from samlib.prompt_decoder import _image_terms

__all__ = ["decode_fast"]


def _split(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(T, H*c) -> (H, T, c)."""
    t, d = x.shape
    return x.reshape(t, heads, d // heads).transpose(0, 1)


def _tokens_to_image(
    attn: Attention, q_in: torch.Tensor, x: torch.Tensor, xp: torch.Tensor
) -> torch.Tensor:
    """Attention of T tokens (queries) over N image tokens ``x`` (keys ``xp`` = x + pe)."""
    h = attn.num_heads
    c = attn.internal_dim // h
    q = _split(attn.q_proj(q_in), h)  # (H, T, c)
    wk = attn.k_proj.weight.view(h, c, -1)  # (H, c, D)
    g = torch.bmm(q, wk).reshape(-1, wk.shape[-1]) / math.sqrt(c)  # (H*T, D)
    a = torch.softmax(g @ xp.T, dim=-1)  # (H*T, N); q.bk is constant per row: dropped
    r = (a @ x).view(h, -1, x.shape[-1])  # (H, T, D); rows of a sum to 1, so bv adds as is
    wv = attn.v_proj.weight.view(h, c, -1)
    out = torch.bmm(r, wv.transpose(1, 2)) + attn.v_proj.bias.view(h, 1, c)  # (H, T, c)
    return attn.out_proj(out.transpose(0, 1).reshape(q_in.shape[0], -1))


def _image_to_tokens(
    attn: Attention,
    xp: torch.Tensor | None,
    k_in: torch.Tensor,
    v_in: torch.Tensor,
    q_img: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of N image tokens (queries ``xp``, or projected ``q_img``) over T tokens."""
    h = attn.num_heads
    c = attn.internal_dim // h
    k = _split(attn.k_proj(k_in), h)  # (H, T, c)
    v = _split(attn.v_proj(v_in), h)
    t = k.shape[1]
    # Scores are laid out (T, H, N) so that the softmax over the T tokens runs along the
    # outermost axis, which is many times faster than a softmax over a short last axis.
    if q_img is not None:
        n = q_img.shape[0]
        qh = q_img.reshape(n, h, c).permute(1, 2, 0)  # (H, c, N)
        s = torch.bmm(k, qh).transpose(0, 1) / math.sqrt(c)  # (T, H, N)
    else:
        wq = attn.q_proj.weight.view(h, c, -1)  # (H, c, D)
        g = torch.bmm(k, wq).transpose(0, 1).reshape(t * h, -1) / math.sqrt(c)  # (T*H, D)
        cq = (k @ attn.q_proj.bias.view(h, c, 1)).transpose(0, 1) / math.sqrt(c)  # (T, H, 1)
        s = (g @ xp.T).view(t, h, -1) + cq  # (T, H, N)
    a = torch.softmax(s, dim=0).reshape(t * h, -1)  # (T*H, N)
    wo = attn.out_proj.weight.view(-1, h, c).transpose(0, 1)  # (H, D, c)
    m = torch.bmm(v, wo.transpose(1, 2)).transpose(0, 1).reshape(t * h, -1)  # (T*H, D)
    return torch.addmm(attn.out_proj.bias, a.T, m)  # (N, D)


def _upscale(dec, keys: torch.Tensor, hw: tuple[int, int], hyper: torch.Tensor) -> torch.Tensor:
    """``output_upscaling`` + hypernetwork product, per pixel; returns (M, 4h, 4w) logits."""
    conv1, ln, act1, conv2, act2 = dec.output_upscaling
    n = keys.shape[0]
    c1, c2 = conv1.out_channels, conv2.out_channels
    # out[co, 2i+a, 2j+b] = sum_ci in[ci, i, j] W[ci, co, a, b] + bias[co]
    w1 = conv1.weight.permute(0, 2, 3, 1).reshape(conv1.in_channels, 4 * c1)
    y = torch.addmm(conv1.bias.repeat(4), keys, w1).view(n, 4, c1)
    y = act1(F.layer_norm(y, (c1,), ln.weight, ln.bias, ln.eps))
    w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
    z = act2(torch.addmm(conv2.bias.repeat(4), y.view(4 * n, c1), w2))
    logits = hyper @ z.view(16 * n, c2).T  # columns ordered (i, j, a, b, a', b')
    h, w = hw
    m = hyper.shape[0]
    logits = logits.view(m, h, w, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4, 6)
    return logits.reshape(m, 4 * h, 4 * w)


@torch.no_grad()
def decode_fast(
    model: Sam,
    features: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor | None,
    mask_slice: slice = slice(None),
    iou_floor: float | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Mask decoder outputs for one prompt set, as ``samlib.prompt_decoder.decode``.

    Parameters
    ----------
    model, features, sparse, dense
        As :func:`samlib.prompt_decoder.decode`.
    mask_slice : slice
        Which of the 1 + num_multimask_outputs mask tokens to compute logits for.
    iou_floor : float, optional
        If no selected mask's predicted IoU exceeds it, skip the upscaling and return
        ``None`` for the logits (the everything-generator's IoU filter, applied early).

    Returns
    -------
    low_res_logits : torch.Tensor or None
        (1, M, 4h, 4w) for the selected mask tokens.
    iou_pred : torch.Tensor
        (1, M) predicted IoU of the selected mask tokens.
    """
    dec = model.mask_decoder
    tf = dec.transformer
    if sparse.shape[0] != 1:
        raise ValueError(f"decode_fast takes one prompt set, got a batch of {sparse.shape[0]}")
    tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight, sparse[0]], dim=0)[None]
    cached = _image_terms(model, features) if dense is None else None
    _, c, h, w = features.shape
    if cached is not None:
        x, pe = cached.x, cached.pe
    else:
        x = (features + dense)[0].flatten(1).T.contiguous()
        pe = model.prompt_encoder.get_dense_pe()[0].flatten(1).T.contiguous()

    # queries stay (1, T, D) for the stock modules; image tensors are (N, D).
    queries = tokens
    for i, layer in enumerate(tf.layers):
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + tokens
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        q = (queries + tokens)[0]
        if i == 0 and cached is not None:
            xp = None
            attn_out = _cached_t2i(
                layer.cross_attn_token_to_image, q, cached.t2i_k[0], cached.t2i_v[0]
            )
        else:
            xp = x + pe
            attn_out = _tokens_to_image(layer.cross_attn_token_to_image, q, x, xp)
        queries = layer.norm2(queries + attn_out)
        queries = layer.norm3(queries + layer.mlp(queries))
        q = (queries + tokens)[0]
        i2t = layer.cross_attn_image_to_token
        if i == 0 and cached is not None:
            attn_out = _image_to_tokens(i2t, None, q, queries[0], q_img=cached.i2t_q[0])
        else:
            attn_out = _image_to_tokens(i2t, xp, q, queries[0])
        x = layer.norm4(x + attn_out)
    q = (queries + tokens)[0]
    queries = queries + _tokens_to_image(tf.final_attn_token_to_image, q, x, x + pe)
    hs = tf.norm_final_attn(queries)[0]

    iou = dec.iou_prediction_head(hs[0])[mask_slice]
    if iou_floor is not None and not bool((iou > iou_floor).any()):
        return None, iou[None]
    idx = range(dec.num_mask_tokens)[mask_slice]
    hyper = torch.stack([dec.output_hypernetworks_mlps[i](hs[1 + i]) for i in idx])
    low = _upscale(dec, x, (h, w), hyper)
    return low[None], iou[None]


def _cached_t2i(
    attn: Attention, q_in: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """Token-to-image attention with precomputed image keys ``k`` and values ``v``."""
    h = attn.num_heads
    c = attn.internal_dim // h
    q = _split(attn.q_proj(q_in), h)
    a = torch.softmax(torch.bmm(q, _split(k, h).transpose(1, 2)) / math.sqrt(c), dim=-1)
    out = torch.bmm(a, _split(v, h))  # (H, T, c)
    return attn.out_proj(out.transpose(0, 1).reshape(q_in.shape[0], -1))
