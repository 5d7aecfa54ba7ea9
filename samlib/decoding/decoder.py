"""SAM's mask decoder for many single-point prompts on one image, without repeated work.

``SamAutomaticMaskGenerator`` runs the stock ``MaskDecoder`` on batches of point prompts.
Every prompt of a batch carries its own copy of the image embedding, and the first
transformer layer projects that identical copy once per prompt. :class:`PointDecoder`
computes the image-only tensors once per image and runs the same operations, in the same
order and precision, for the parts that depend on the prompt, so the logits and
predicted IoUs equal the stock decoder's (checked bit for bit in the tests).

Bit equality needs care because CPU kernels pick their algorithm from the tensor shapes:
a matrix product over a few prompt tokens gives other bits for 5 rows than for 8, and a
batch of one takes other kernels than larger batches. So the decoder runs layer by layer
over a whole stock batch: token-side layers on all its prompts at once, as the stock
decoder does, and image-side work (4,096 tokens per prompt for SAM) in chunks of prompts,
which keeps its temporaries small; a lone prompt in a chunk is computed as a batch of two
where that matters. A :class:`PointDecoder` keeps per-image state: use one per thread.

Inside a :func:`samlib.workspace.workspace`, the image-sized intermediates go to reused
buffers and element-wise steps run in place (same operations, same bits), since paging
in fresh memory for them is a measurable share of the decoding time on a CPU
(``benchmarks/README.md``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from segment_anything.modeling import Sam
from segment_anything.modeling.transformer import Attention

from samlib.decoding.image_terms import image_terms
from samlib.workspace import buffer, linear_into


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., T, H*c) -> (..., H, T, c), a view as in the stock ``Attention``."""
    *lead, t, d = x.shape
    return x.reshape(*lead, t, heads, d // heads).transpose(-3, -2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, n, t, c = x.shape
    return x.transpose(1, 2).reshape(b, t, n * c)


def _merge_into(x: torch.Tensor, name: str) -> torch.Tensor:
    """:func:`_merge` written into scratch buffer ``name`` (the same copy)."""
    b, n, t, c = x.shape
    out = buffer(name, (b, t, n * c), x)
    out.view(b, t, n, c).copy_(x.transpose(1, 2))
    return out


def token_self_attention(
    layer: torch.nn.Module, queries: torch.Tensor, tokens: torch.Tensor
) -> torch.Tensor:
    """The self-attention step of a ``TwoWayAttentionBlock`` on the prompt tokens (stock
    operations): ``tokens`` are the block's query positional terms."""
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + tokens
        queries = queries + layer.self_attn(q=q, k=q, v=queries)
    return layer.norm1(queries)


def _contiguous_into(x: torch.Tensor, name: str) -> torch.Tensor:
    """``x.contiguous()`` in scratch buffer ``name`` (matmul makes this copy itself)."""
    out = buffer(name, x.shape, x)
    out.copy_(x)
    return out


# Per (layer shape, input shape and strides, dtype, device, threads): None where a
# transposed convolution gives other bits on a channels-last copy of its input, else the
# memory format of the stock output. Checked on first use.
_CL_FORMAT: dict[tuple, torch.memory_format | None] = {}


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` with canonical channels-last strides (a view where the memory already is).

    A single image whose pixels are already channels-major in memory (SAM's image tokens
    seen as a (1, C, h, w) map) passes ``is_contiguous(channels_last)`` but keeps an
    odd batch stride, with which convolutions take the slow generic path.
    """
    b, c, h, w = x.shape
    if b == 1 and x.is_contiguous(memory_format=torch.channels_last):
        return x.as_strided(x.shape, (c * h * w, 1, w * c, c))
    return x.contiguous(memory_format=torch.channels_last)


def _conv_t(conv: torch.nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``, run on a channels-last copy of ``x`` where that gives the same bits.

    On a CPU, oneDNN's transposed convolution of one image is several times faster on
    channels-last input (``benchmarks/README.md``); it is used where the first call for
    that shape gave the same numbers, and the result
    comes back in the memory format the stock call returns.
    """
    if x.device.type != "cpu":
        return conv(x)
    key = (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, tuple(x.shape))
    key += (x.stride(), x.dtype, torch.get_num_threads())
    if key not in _CL_FORMAT:
        ref = conv(x)
        out = conv(_channels_last(x))
        fmt = (
            torch.channels_last
            if ref.is_contiguous(memory_format=torch.channels_last)
            else torch.contiguous_format
        )
        if not ref.is_contiguous(memory_format=fmt):
            fmt = None
        _CL_FORMAT[key] = fmt if torch.equal(out, ref) else None
        return ref
    fmt = _CL_FORMAT[key]
    if fmt is None:
        return conv(x)
    return conv(_channels_last(x)).contiguous(memory_format=fmt)


def upscale(dec: torch.nn.Module, src: torch.Tensor) -> torch.Tensor:
    """``dec.output_upscaling(src)``, with the same bits, faster on a CPU.

    The transposed convolutions run on channels-last input where that is bit-identical
    (:func:`_conv_t`); stock ``LayerNorm2d`` computes ``x - u`` twice and allocates
    five image-sized tensors, here they are one subtraction in place and one reused
    buffer; GELU runs in place.
    """
    conv1, ln, act1, conv2, act2 = dec.output_upscaling
    gelus = type(act1) is torch.nn.GELU and type(act2) is torch.nn.GELU
    convs = type(conv1) is torch.nn.ConvTranspose2d and type(conv2) is torch.nn.ConvTranspose2d
    if not (gelus and convs and type(ln).__name__ == "LayerNorm2d"):
        return dec.output_upscaling(src)
    x = _conv_t(conv1, src)
    u = x.mean(1, keepdim=True)
    x.sub_(u)
    # the squares in the layout of the stock (x - u).pow(2), for the same mean below
    sq = torch.pow(x, 2, out=buffer("upscale_sq", x.shape, x)) if x.is_contiguous() else x.pow(2)
    s = sq.mean(1, keepdim=True)
    x.div_(torch.sqrt(s + ln.eps))
    x.mul_(ln.weight[:, None, None]).add_(ln.bias[:, None, None])
    torch.ops.aten.gelu_(x, approximate=act1.approximate)
    y = _conv_t(conv2, x)
    return torch.ops.aten.gelu_(y, approximate=act2.approximate)


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
        self.dec = dec
        with torch.no_grad():
            terms = image_terms(model, features)
            self.shape = terms.src.shape
            # Image-only projections of the first layer: identical for every prompt.
            self.k0, self.v0, self.q0 = terms.t2i_k, terms.t2i_v, terms.i2t_q
            # Contiguous copies for the element-wise additions of later layers: the sums
            # are the same numbers, read several times faster than from permuted views.
            self.keys_c, self.key_pe_c = terms.x, terms.pe
            out = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
            self.output_tokens = out.unsqueeze(0)
        self._kv_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

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
        self, coords: torch.Tensor, chunk: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution logits (B, 3, 4h, 4w) and predicted IoUs (B, 3) of a stock batch
        of B points (see :meth:`decode`)."""
        iou, parts = self.decode(coords, chunk or coords.shape[0])
        return torch.cat([low for _, _, _, low in parts]), iou

    @torch.no_grad()
    def decode(
        self, coords: torch.Tensor, chunk: int, iou_floor: float | None = None
    ) -> tuple[torch.Tensor, Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]]:
        """Decode one stock batch of points, the image-side work ``chunk`` prompts at a time.

        ``coords`` is (B, 2) XY in the model's input frame (after ResizeLongestSide),
        float64 or float32, exactly as the stock generator passes one batch of
        ``points_per_batch`` points. The transformer runs layer by layer on the whole
        batch: the token-side layers (a few rows per prompt) on all B prompts at once as
        in the stock decoder, the image-side ones (thousands of rows per prompt) a chunk
        at a time.

        Returns the predicted IoUs (B, 3) of the multimask outputs and an iterator over
        the chunks: ``(start, end, sel, low)`` with ``sel`` the indices (within the
        chunk) of prompts that have a mask above ``iou_floor`` (all if None) and ``low``
        their logits (len(sel), 3, 4h, 4w), upscaled only when the chunk is reached.
        """
        dec = self.dec
        tf = dec.transformer
        n = coords.shape[0]
        tokens = torch.cat((self.output_tokens.expand(n, -1, -1), self.sparse(coords)), dim=1)
        spans = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
        keys: list[torch.Tensor | None] = [None] * len(spans)
        queries = tokens
        for i, layer in enumerate(tf.layers):
            first = i == 0
            queries = token_self_attention(layer, queries, tokens)
            queries = layer.norm2(
                queries
                + self._to_image(layer.cross_attn_token_to_image, queries + tokens, keys, spans)
            )
            queries = layer.norm3(queries + layer.mlp(queries))
            a = layer.cross_attn_image_to_token
            k_tok, v_tok = a.k_proj(queries + tokens), a.v_proj(queries)
            for j, (s, e) in enumerate(spans):
                keys[j] = self._to_tokens(
                    a, layer.norm4, k_tok[s:e], v_tok[s:e], None if first else keys[j], n
                )
        a = tf.final_attn_token_to_image
        queries = queries + self._to_image(a, queries + tokens, keys, spans)
        hs = tf.norm_final_attn(queries)
        iou = dec.iou_prediction_head(hs[:, 0, :])[:, 1:]
        hyper = torch.stack(
            [mlp(hs[:, 1 + i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1
        )

        def chunks() -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
            for j, (s, e) in enumerate(spans):
                sel = torch.arange(e - s, device=iou.device)
                if iou_floor is not None:
                    sel = torch.nonzero((iou[s:e] > iou_floor).any(dim=1)).flatten()
                with torch.no_grad():  # iterated after decode() has returned
                    low = self._masks(keys[j][sel], hyper[s:e][sel], n)
                keys[j] = None
                yield s, e, sel, low

        return iou, chunks()

    def _to_image(
        self,
        attn: Attention,
        q_in: torch.Tensor,
        keys: list[torch.Tensor | None],
        spans: list[tuple[int, int]],
    ) -> torch.Tensor:
        """Token-to-image attention of all prompts: projections of the tokens at once,
        attention over each chunk's image tokens (``None``: the first layer's)."""
        q = split_heads(attn.q_proj(q_in), attn.num_heads)
        n = q_in.shape[0]
        out = []
        for (s, e), x in zip(spans, keys, strict=True):
            b = e - s
            if x is None:
                kt, v = self._first_kv(b)
            else:
                kpe = torch.add(x, self.key_pe_c, out=buffer("kpe", x.shape, x))
                kt = split_heads(linear_into(attn.k_proj, kpe, "k"), attn.num_heads).transpose(2, 3)
                v = split_heads(linear_into(attn.v_proj, x, "v"), attn.num_heads)
            if b == 1 and n > 1:  # a lone prompt: computed as a batch of two
                qs, kt, v = (t.expand(2, -1, -1, -1) for t in (q[s:e], kt, v))
                a = torch.softmax((qs @ kt) / math.sqrt(qs.shape[-1]), dim=-1)
                out.append(_merge(a @ v)[:1])
                continue
            if x is not None:  # the copies matmul would make, into buffers
                kt, v = _contiguous_into(kt, "attn_kt"), _contiguous_into(v, "attn_v")
            a = torch.softmax((q[s:e] @ kt) / math.sqrt(q.shape[-1]), dim=-1)
            out.append(_merge(a @ v))
        return attn.out_proj(torch.cat(out))

    def _first_kv(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """First-layer image keys (transposed) and values, in per-head layout, batch b."""
        cache = self._kv_cache
        if b not in cache:
            h = self.dec.transformer.layers[0].cross_attn_token_to_image.num_heads
            kt = split_heads(self.k0.expand(b, -1, -1), h).permute(0, 1, 3, 2).contiguous()
            cache[b] = (kt, split_heads(self.v0.expand(b, -1, -1), h).contiguous())
        return cache[b]

    def _to_tokens(
        self,
        attn: Attention,
        norm: torch.nn.Module,
        k_tok: torch.Tensor,
        v_tok: torch.Tensor,
        x: torch.Tensor | None,
        n: int,
    ) -> torch.Tensor:
        """Image-to-token attention of one chunk's image tokens ``x`` (None: the first
        layer's), residual and norm: the chunk's new image tokens."""
        h = attn.num_heads
        b = k_tok.shape[0]
        if x is None:
            q, base = self.q0.expand(b, -1, -1), self.keys_c
        else:
            kpe = torch.add(x, self.key_pe_c, out=buffer("kpe", x.shape, x))
            q, base = linear_into(attn.q_proj, kpe, "q"), x
        q, k, v = split_heads(q, h), split_heads(k_tok, h), split_heads(v_tok, h)
        if b == 1 and n > 1:  # a lone prompt: computed as a batch of two
            q, k, v = (t.expand(2, -1, -1, -1) for t in (q, k, v))
            a = torch.softmax((q @ k.permute(0, 1, 3, 2)) / math.sqrt(q.shape[-1]), dim=-1)
            return norm(base + attn.out_proj(_merge(a @ v)[:1]))
        a = q @ k.permute(0, 1, 3, 2)
        a.div_(math.sqrt(q.shape[-1]))
        a = torch.softmax(a, dim=-1, out=buffer("attn_softmax", a.shape, a))
        out = linear_into(attn.out_proj, _merge_into(a @ v, "attn_merged"), "attn_out")
        return norm(out.add_(base))  # the stock sum base + out, in the scratch buffer

    def _masks(self, keys: torch.Tensor, hyper: torch.Tensor, n: int) -> torch.Tensor:
        """Upscaled multimask logits (K, 3, 4h, 4w) of K prompts' image tokens."""
        dec = self.dec
        k = keys.shape[0]
        _, c, h, w = self.shape
        if k == 0:
            return hyper.new_zeros((0, 3, 4 * h, 4 * w))
        if k == 1 and n > 1:
            src = torch.cat([keys, keys]).transpose(1, 2).view(2, c, h, w)
            up = upscale(dec, src)[:1]
        else:
            up = upscale(dec, keys.transpose(1, 2).view(k, c, h, w))
        _, c, h, w = up.shape
        masks = (hyper @ up.view(k, c, h * w)).view(k, -1, h, w)
        return masks[:, 1:]
