"""The image-only terms of SAM's mask decoder: computed once per image, shared by every decoder.

The stock ``MaskDecoder`` adds the no-mask embedding and the positional encoding to the
image embedding and projects it in the first transformer layer for every prompt again;
those tensors depend on the image alone. :func:`image_terms` computes them once per
(model, embedding) and keeps them for the point decoder of segment everything, the
step-for-step prompt decoder and the fast decoder alike.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch
from segment_anything.modeling import Sam

__all__ = ["ImageTerms", "image_terms"]


@dataclass
class ImageTerms:
    """Prompt-independent tensors of one (model, image embedding) pair."""

    src: torch.Tensor  # (1, C, h, w) embedding + no-mask embedding
    pos_src: torch.Tensor  # (1, C, h, w) dense positional encoding
    keys: torch.Tensor  # (1, hw, C) view of src
    key_pe: torch.Tensor  # (1, hw, C) view of pos_src
    t2i_k: torch.Tensor  # layer 0 token->image key projection
    t2i_v: torch.Tensor  # layer 0 token->image value projection
    i2t_q: torch.Tensor  # layer 0 image->token query projection
    x: torch.Tensor  # (hw, C) contiguous copy of keys[0]
    pe: torch.Tensor  # (hw, C) contiguous copy of key_pe[0]


_LOCK = threading.Lock()
# About 14 MB per image for SAM's 256 x 64 x 64 embedding; the positional encoding
# (8 MB) is shared by all images of a model.
_TERMS: OrderedDict[tuple[int, ...], tuple[weakref.ref, weakref.ref, ImageTerms]] = OrderedDict()
_MAX_TERMS = 4
_PE: dict[tuple[int, int], tuple[weakref.ref, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}


def _weights_version(model: Sam) -> int:
    """Changes whenever a weight used by the cached terms is modified in place
    (optimizer steps, ``load_state_dict``), so a cache never serves stale tensors."""
    pe, dec = model.prompt_encoder, model.mask_decoder
    layer0 = dec.transformer.layers[0]
    tensors = [pe.pe_layer.positional_encoding_gaussian_matrix, pe.no_mask_embed.weight]
    for lin in (
        layer0.cross_attn_token_to_image.k_proj,
        layer0.cross_attn_token_to_image.v_proj,
        layer0.cross_attn_image_to_token.q_proj,
    ):
        tensors += [lin.weight, lin.bias]
    return sum(t._version for t in tensors)


def _model_pe(model: Sam) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pos_src (1, C, h, w), key_pe (1, hw, C) view, pe (hw, C) contiguous) of a model."""
    with _LOCK:
        pe_key = (
            id(model),
            model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix._version,
        )
        hit = _PE.get(pe_key)
        if hit is not None and hit[0]() is model and hit[1][0].device == model.device:
            return hit[1]
    pos_src = torch.repeat_interleave(model.prompt_encoder.get_dense_pe(), 1, dim=0)
    key_pe = pos_src.flatten(2).permute(0, 2, 1)
    value = (pos_src, key_pe, key_pe[0].contiguous())
    with _LOCK:
        for k in [k for k, (ref, _) in _PE.items() if ref() is None or k[0] == id(model)]:
            del _PE[k]
        _PE[pe_key] = (weakref.ref(model), value)
    return value


def image_terms(model: Sam, features: torch.Tensor) -> ImageTerms:
    """The prompt-independent tensors of ``features`` under ``model``, cached.

    Kept for the last few (model, embedding) pairs and recomputed when either changes in
    place, so every decoder of an image shares one computation.
    """
    key = (id(model), id(features), features._version, _weights_version(model))
    with _LOCK:
        hit = _TERMS.get(key)
        if hit is not None and hit[0]() is model and hit[1]() is features:
            _TERMS.move_to_end(key)
            return hit[2]
    pe = model.prompt_encoder
    dec = model.mask_decoder
    h, w = pe.image_embedding_size
    dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, h, w)
    src = torch.repeat_interleave(features, 1, dim=0) + dense
    pos_src, key_pe, pe_contiguous = _model_pe(model)
    keys = src.flatten(2).permute(0, 2, 1)
    layer0 = dec.transformer.layers[0]
    k_plus_pe = keys + key_pe
    terms = ImageTerms(
        src=src,
        pos_src=pos_src,
        keys=keys,
        key_pe=key_pe,
        t2i_k=layer0.cross_attn_token_to_image.k_proj(k_plus_pe),
        t2i_v=layer0.cross_attn_token_to_image.v_proj(keys),
        i2t_q=layer0.cross_attn_image_to_token.q_proj(k_plus_pe),
        x=keys[0].contiguous(),
        pe=pe_contiguous,
    )
    with _LOCK:
        _TERMS[key] = (weakref.ref(model), weakref.ref(features), terms)
        _TERMS.move_to_end(key)
        while len(_TERMS) > _MAX_TERMS:
            _TERMS.popitem(last=False)
    return terms
