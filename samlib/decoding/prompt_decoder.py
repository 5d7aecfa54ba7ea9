"""SAM's prompt-to-mask decoder, step for step, with the image-only work done once per image.

``segment_anything``'s ``MaskDecoder`` recomputes, for every prompt, tensors that depend
only on the image embedding: the dense positional encoding, the embedding plus the
"no mask" embedding, and the first transformer layer's key/value projections of the
image tokens. This module runs the very same operations in the same order on the same
tensor layouts — so the results are bit-identical — but keeps those image-only tensors
per embedding and reuses them for every later prompt on that image.
"""

from __future__ import annotations

import math

import torch
from segment_anything.modeling import Sam
from segment_anything.modeling.transformer import Attention

from samlib.decoding.decoder import token_self_attention, upscale
from samlib.decoding.image_terms import ImageTerms, image_terms

__all__ = ["decode"]


def _attend(
    attn: Attention,
    q: torch.Tensor | None,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    *,
    qp: torch.Tensor | None = None,
    kp: torch.Tensor | None = None,
    vp: torch.Tensor | None = None,
) -> torch.Tensor:
    """``Attention.forward`` with optionally precomputed input projections."""
    q = attn.q_proj(q) if qp is None else qp
    k = attn.k_proj(k) if kp is None else kp
    v = attn.v_proj(v) if vp is None else vp
    q = attn._separate_heads(q, attn.num_heads)
    k = attn._separate_heads(k, attn.num_heads)
    v = attn._separate_heads(v, attn.num_heads)
    _, _, _, c_per_head = q.shape
    a = q @ k.permute(0, 1, 3, 2)
    a = a / math.sqrt(c_per_head)
    a = torch.softmax(a, dim=-1)
    out = a @ v
    out = attn._recombine_heads(out)
    return attn.out_proj(out)


def _block(layer, queries, keys, query_pe, key_pe, cached: ImageTerms | None):
    """``TwoWayAttentionBlock.forward``; ``cached`` supplies layer-0 image projections."""
    queries = token_self_attention(layer, queries, query_pe)

    q = queries + query_pe
    if cached is not None:
        k = None  # only the uncached branch needs keys + key_pe again
        attn_out = _attend(
            layer.cross_attn_token_to_image, q, None, None, kp=cached.t2i_k, vp=cached.t2i_v
        )
    else:
        # keys + key_pe is the same sum in both cross-attentions: compute it once.
        k = keys + key_pe
        attn_out = layer.cross_attn_token_to_image(q=q, k=k, v=keys)
    queries = queries + attn_out
    queries = layer.norm2(queries)

    mlp_out = layer.mlp(queries)
    queries = queries + mlp_out
    queries = layer.norm3(queries)

    q = queries + query_pe
    if cached is not None:
        attn_out = _attend(layer.cross_attn_image_to_token, None, q, queries, qp=cached.i2t_q)
    else:
        attn_out = layer.cross_attn_image_to_token(q=k, k=q, v=queries)
    keys = keys + attn_out
    keys = layer.norm4(keys)
    return queries, keys


@torch.no_grad()
def decode(
    model: Sam,
    features: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run SAM's mask decoder for one prompt set; return all mask tokens' outputs.

    Parameters
    ----------
    model : Sam
    features : torch.Tensor
        (1, C, h, w) image embedding.
    sparse : torch.Tensor
        (1, N, C) sparse prompt embeddings from ``model.prompt_encoder``.
    dense : torch.Tensor or None
        (1, C, h, w) dense embedding of a mask input, or ``None`` for no mask input.

    Returns
    -------
    low_res_logits : torch.Tensor
        (1, 1 + num_multimask_outputs, 4h, 4w) logits; index 0 is the single-mask
        output, the rest the multimask outputs (as ``MaskDecoder.predict_masks``).
    iou_pred : torch.Tensor
        (1, 1 + num_multimask_outputs) predicted IoU.
    """
    dec = model.mask_decoder
    if sparse.shape[0] != 1:
        raise ValueError(f"decode takes one prompt set, got a batch of {sparse.shape[0]}")
    output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(1, -1, -1)
    tokens = torch.cat((output_tokens, sparse), dim=1)

    cached = image_terms(model, features) if dense is None else None
    if cached is not None:
        src, keys, key_pe = cached.src, cached.keys, cached.key_pe
    else:
        src = torch.repeat_interleave(features, 1, dim=0) + dense
        pos_src = torch.repeat_interleave(model.prompt_encoder.get_dense_pe(), 1, dim=0)
        keys = src.flatten(2).permute(0, 2, 1)
        key_pe = pos_src.flatten(2).permute(0, 2, 1)
    b, c, h, w = src.shape

    tf = dec.transformer
    queries = tokens
    for i, layer in enumerate(tf.layers):
        queries, keys = _block(layer, queries, keys, tokens, key_pe, cached if i == 0 else None)
    q = queries + tokens
    k = keys + key_pe
    attn_out = tf.final_attn_token_to_image(q=q, k=k, v=keys)
    queries = queries + attn_out
    hs = tf.norm_final_attn(queries)
    src = keys

    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : (1 + dec.num_mask_tokens), :]
    src = src.transpose(1, 2).view(b, c, h, w)
    upscaled = upscale(dec, src)
    hyper_in = torch.stack(
        [
            dec.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :])
            for i in range(dec.num_mask_tokens)
        ],
        dim=1,
    )
    b, c, h, w = upscaled.shape
    masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
    iou_pred = dec.iou_prediction_head(iou_token_out)
    return masks, iou_pred
