"""SAM's mask decoder for many single-point prompts on one image, without repeated work.

``SamAutomaticMaskGenerator`` runs the stock ``MaskDecoder`` on batches of point prompts.
Every prompt of a batch carries its own copy of the image embedding, and the first
transformer layer projects that identical copy once per prompt. :class:`PointDecoder`
computes the image-only tensors once per image and runs the same operations, in the same
order and precision, for the parts that depend on the prompt, so the logits and
predicted IoUs equal the stock decoder's (checked bit for bit in the tests).
"""

from __future__ import annotations

import math

import torch
from segment_anything.modeling import Sam
from segment_anything.modeling.transformer import Attention


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    b, t, c = x.shape
    return x.reshape(b, t, n, c // n).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, n, t, c = x.shape
    return x.transpose(1, 2).reshape(b, t, n * c)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn: Attention) -> torch.Tensor:
    """Multi-head attention of already projected q, k, v (stock Attention's maths)."""
    n = attn.num_heads
    q, k, v = _heads(q, n), _heads(k, n), _heads(v, n)
    a = q @ k.permute(0, 1, 3, 2)
    a = a / math.sqrt(q.shape[-1])
    a = torch.softmax(a, dim=-1)
    return attn.out_proj(_merge(a @ v))


class PointDecoder:
    """Decode single foreground-point prompts on one image embedding.

    Parameters
    ----------
    model : Sam
        The model whose prompt encoder and mask decoder are used.
    features : torch.Tensor
        (1, C, h, w) float32 image embedding on the model's device.
    """

    def __init__(self, model: Sam, features: torch.Tensor) -> None:
        self.model = model
        dec = model.mask_decoder
        pe = model.prompt_encoder
        self.dec = dec
        with torch.no_grad():
            dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
                1, -1, *pe.image_embedding_size
            )
            src = features + dense
            self.shape = src.shape
            image_pe = pe.get_dense_pe()
            self.keys = src.flatten(2).permute(0, 2, 1)
            self.key_pe = image_pe.flatten(2).permute(0, 2, 1)
            layer = dec.transformer.layers[0]
            k = self.keys + self.key_pe
            # Image-only projections of the first layer: identical for every prompt.
            self.k0 = layer.cross_attn_token_to_image.k_proj(k)
            self.v0 = layer.cross_attn_token_to_image.v_proj(self.keys)
            self.q0 = layer.cross_attn_image_to_token.q_proj(k)
            out = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
            self.output_tokens = out.unsqueeze(0)

    @torch.no_grad()
    def sparse(self, coords: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings (B, 2, C) of B foreground points, XY in the input frame."""
        labels = torch.ones(coords.shape[0], 1, dtype=torch.int, device=coords.device)
        sparse, _ = self.model.prompt_encoder(
            points=(coords[:, None, :], labels), boxes=None, masks=None
        )
        return sparse

    @torch.no_grad()
    def __call__(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution logits (B, 3, 4h, 4w) and predicted IoUs (B, 3) of B points.

        ``coords`` is (B, 2) XY in the model's input frame (after ResizeLongestSide),
        float64 or float32, exactly as the stock generator passes it.
        """
        return self.decode_sparse(self.sparse(coords))

    @torch.no_grad()
    def decode_sparse(self, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode prompt embeddings (B, T, C); multimask output as in the stock decoder."""
        dec = self.dec
        tf = dec.transformer
        b = sparse.shape[0]
        tokens = torch.cat((self.output_tokens.expand(b, -1, -1), sparse), dim=1)
        query_pe = tokens
        # First layer: the keys are the same image for every prompt.
        l0 = tf.layers[0]
        queries = l0.self_attn(q=tokens, k=tokens, v=tokens)
        queries = l0.norm1(queries)
        a = l0.cross_attn_token_to_image
        q = a.q_proj(queries + query_pe)
        attn_out = _attend(q, self.k0.expand(b, -1, -1), self.v0.expand(b, -1, -1), a)
        queries = l0.norm2(queries + attn_out)
        queries = l0.norm3(queries + l0.mlp(queries))
        a = l0.cross_attn_image_to_token
        qp = queries + query_pe
        attn_out = _attend(self.q0.expand(b, -1, -1), a.k_proj(qp), a.v_proj(queries), a)
        keys = l0.norm4(self.keys + attn_out)
        key_pe = self.key_pe
        for layer in tf.layers[1:]:
            queries, keys = layer(queries=queries, keys=keys, query_pe=query_pe, key_pe=key_pe)
        q = queries + query_pe
        k = keys + key_pe
        queries = queries + tf.final_attn_token_to_image(q=q, k=k, v=keys)
        hs = tf.norm_final_attn(queries)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + dec.num_mask_tokens, :]
        _, c, h, w = self.shape
        src = keys.transpose(1, 2).view(b, c, h, w)
        up = dec.output_upscaling(src)
        hyper = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)],
            dim=1,
        )
        b, c, h, w = up.shape
        masks = (hyper @ up.view(b, c, h * w)).view(b, -1, h, w)
        iou = dec.iou_prediction_head(iou_token_out)
        return masks[:, 1:], iou[:, 1:]
