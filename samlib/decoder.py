"""SAM's mask decoder for many single-point prompts on one image, without repeated work.

``SamAutomaticMaskGenerator`` runs the stock ``MaskDecoder`` on batches of point prompts.
Every prompt of a batch carries its own copy of the image embedding, and the first
transformer layer projects that identical copy once per prompt. :class:`PointDecoder`
computes the image-only tensors once per image and runs the same operations, in the same
order and precision, for the parts that depend on the prompt, so the logits and
predicted IoUs equal the stock decoder's (checked bit for bit in the tests).

Bit equality needs care because CPU kernels pick their algorithm from the tensor shapes:
a matrix product over a few prompt tokens gives other bits for 5 rows than for 8, and a
batch of one takes other kernels than larger batches. So prompts may be decoded in any
chunks of a stock batch, but token-side layers run on a zero-padded copy of the whole
stock batch (cheap: a few rows per prompt) and a lone prompt is computed as a batch of
two where that matters. A :class:`PointDecoder` keeps per-call state: use one per thread.
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
            # Contiguous copies for the element-wise additions of later layers: the sums
            # are the same numbers, read several times faster than from permuted views.
            self.keys_c = self.keys.contiguous()
            self.key_pe_c = self.key_pe.contiguous()
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
    def __call__(
        self, coords: torch.Tensor, stock_batch: int | None = None, offset: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution logits (B, 3, 4h, 4w) and predicted IoUs (B, 3) of B points.

        ``coords`` is (B, 2) XY in the model's input frame (after ResizeLongestSide),
        float64 or float32, exactly as the stock generator passes it. ``stock_batch`` and
        ``offset`` say which stock batch these points belong to and where (see
        :meth:`decode_sparse`).
        """
        self._n, self._off = stock_batch or coords.shape[0], offset
        masks, iou, _ = self.decode_sparse(self._tok(self.sparse, coords), stock_batch, offset)
        return masks, iou

    @torch.no_grad()
    def decode_points(
        self, coords: torch.Tensor, stock_batch: int, offset: int, iou_floor: float | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`decode_sparse`, from (B, 2) XY points in the input frame."""
        self._n, self._off = stock_batch, offset
        return self.decode_sparse(self._tok(self.sparse, coords), stock_batch, offset, iou_floor)

    def _tok(self, fn, x: torch.Tensor, *more: torch.Tensor) -> torch.Tensor:
        """Apply ``fn`` to per-prompt rows x (b, ...) laid out as in the stock batch.

        Small matrix products give bits that depend on the number of rows, so token-side
        layers run on a zero-padded batch of the stock size, our rows at their stock
        positions; the image-side layers (thousands of rows per prompt) do not need it.
        """
        n, off, b = self._n, self._off, x.shape[0]
        if n == b:
            return fn(x, *more)
        padded = []
        for t in (x, *more):
            full = t.new_zeros((n, *t.shape[1:]))
            full[off : off + b] = t
            padded.append(full)
        return fn(*padded)[off : off + b]

    def _attend(self, attn: Attention, q, k, v, *, tok_q: bool) -> torch.Tensor:
        """Stock ``Attention.forward`` on projected q, k, v; out_proj as token- or image-side."""
        n = attn.num_heads
        one = self._dup
        if one:
            q, k, v = (t.expand(2, -1, -1) for t in (q, k, v))
        q, k, v = _heads(q, n), _heads(k, n), _heads(v, n)
        a = q @ k.permute(0, 1, 3, 2)
        a = a / math.sqrt(q.shape[-1])
        a = torch.softmax(a, dim=-1)
        out = _merge(a @ v)
        if one:
            out = out[:1]
        return self._tok(attn.out_proj, out) if tok_q else attn.out_proj(out)

    def _block(self, layer, queries, keys, query_pe, first: bool):
        """One TwoWayAttentionBlock; ``first`` uses the shared image-side projections."""
        b = queries.shape[0]
        if layer.skip_first_layer_pe:
            queries = self._tok(lambda t: layer.self_attn(q=t, k=t, v=t), queries)
        else:
            q = queries + query_pe
            queries = queries + self._tok(lambda t, v: layer.self_attn(q=t, k=t, v=v), q, queries)
        queries = layer.norm1(queries)
        a = layer.cross_attn_token_to_image
        q = self._tok(a.q_proj, queries + query_pe)
        if first:
            k, v = self.k0.expand(b, -1, -1), self.v0.expand(b, -1, -1)
        else:
            # keys + key_pe is the same tensor in both cross attentions: add it once
            kpe = keys + self.key_pe_c
            k, v = a.k_proj(kpe), a.v_proj(keys)
        queries = layer.norm2(queries + self._attend(a, q, k, v, tok_q=True))
        queries = layer.norm3(queries + self._tok(layer.mlp, queries))
        a = layer.cross_attn_image_to_token
        qp = queries + query_pe
        q = self.q0.expand(b, -1, -1) if first else a.q_proj(kpe)
        k, v = self._tok(a.k_proj, qp), self._tok(a.v_proj, queries)
        attn_out = self._attend(a, q, k, v, tok_q=False)
        keys = layer.norm4((self.keys_c if first else keys) + attn_out)
        return queries, keys

    @torch.no_grad()
    def decode_sparse(
        self,
        sparse: torch.Tensor,
        stock_batch: int | None = None,
        offset: int = 0,
        iou_floor: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode prompt embeddings (B, T, C); multimask output as in the stock decoder.

        The prompts are rows ``offset:offset+B`` of a stock batch of ``stock_batch``
        prompts (default: a batch of their own), which fixes the bits of the result.

        Returns the logits (K, 3, 4h, 4w) of the K prompts that have a mask with
        predicted IoU above ``iou_floor`` (all prompts if None; the upscaling of the
        others is skipped), the predicted IoUs (B, 3) and the (K,) prompt indices.
        """
        dec = self.dec
        tf = dec.transformer
        b = sparse.shape[0]
        self._n, self._off = stock_batch or b, offset
        tokens = torch.cat((self.output_tokens.expand(b, -1, -1), sparse), dim=1)
        # Some kernels treat a batch of one differently: a lone prompt of a larger stock
        # batch is computed as a batch of two where that matters.
        self._dup = b == 1 and self._n > 1
        queries, keys = tokens, None
        for i, layer in enumerate(tf.layers):
            queries, keys = self._block(layer, queries, keys, tokens, first=i == 0)
        a = tf.final_attn_token_to_image
        q = self._tok(a.q_proj, queries + tokens)
        k, v = a.k_proj(keys + self.key_pe_c), a.v_proj(keys)
        queries = queries + self._attend(a, q, k, v, tok_q=True)
        hs = tf.norm_final_attn(queries)
        iou = self._tok(dec.iou_prediction_head, hs[:, 0, :])[:, 1:]
        hyper = torch.stack(
            [
                self._tok(mlp, hs[:, 1 + i, :])
                for i, mlp in enumerate(dec.output_hypernetworks_mlps)
            ],
            dim=1,
        )
        sel = torch.arange(b, device=iou.device)
        if iou_floor is not None:
            sel = torch.nonzero((iou > iou_floor).any(dim=1)).flatten()
            keys, hyper = keys[sel], hyper[sel]
        k = len(sel)
        _, c, h, w = self.shape
        if k == 0:
            return hyper.new_zeros((0, 3, 4 * h, 4 * w)), iou, sel
        if k == 1 and self._n > 1:
            src = torch.cat([keys, keys]).transpose(1, 2).view(2, c, h, w)
            up = dec.output_upscaling(src)[:1]
        else:
            up = dec.output_upscaling(keys.transpose(1, 2).view(k, c, h, w))
        _, c, h, w = up.shape
        masks = (hyper @ up.view(k, c, h * w)).view(k, -1, h, w)
        return masks[:, 1:], iou, sel
