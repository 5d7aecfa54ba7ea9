"""A small convolutional image encoder for SAM, and the demo model's sizes.

Importing this module registers the encoder as ``"cnn"`` in :data:`samlib.models.arch.ENCODERS`,
so :func:`samlib.models.arch.build_sam` (and through it
:func:`samlib.models.loading.load_model`) can
build SAM models whose ``SamConfig.encoder == "cnn"``. The encoder maps a padded
``img_size`` x ``img_size`` RGB input to a ``(prompt_embed_dim, img_size / patch_size,
img_size / patch_size)`` embedding, as SAM's ViT does, so SAM's prompt encoder, mask
decoder, ``SamPredictor`` and ``SamAutomaticMaskGenerator`` work unchanged.
"""

from __future__ import annotations

import torch
from segment_anything.modeling.common import LayerNorm2d
from torch import nn
from torch.nn import functional as F

from samlib.errors import CheckpointError
from samlib.models.arch import ENCODERS, INT_BOUNDS, SamConfig


class _Block(nn.Module):
    """Residual 3x3 conv block with group norm; ``dilation`` widens the receptive field."""

    def __init__(self, ch: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=dilation, dilation=dilation, bias=False)
        self.norm1 = nn.GroupNorm(4, ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(4, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.norm1(self.conv1(x)))
        return F.gelu(x + self.norm2(self.conv2(y)))


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.GroupNorm(4, cout), nn.GELU()
    )


class SmallCNNEncoder(nn.Module):
    """Small CNN image encoder with SAM's interface.

    Two stride-2 stems bring the input to the embedding grid (``patch_size`` 4), residual
    blocks work there, and a coarser context branch (one more stride 2, up-sampled and
    added back) sees whole nuclei and their neighbours. A 1x1 + 3x3 neck with
    ``LayerNorm2d``, as in SAM's ViT, gives ``out_chans`` channels.

    Parameters
    ----------
    img_size : int
        Side of the square padded input; the embedding is ``img_size // 4`` on a side.
    widths : (int, int, int)
        Channels at strides 2, 4 and 8.
    depth : int
        Residual blocks at stride 4 (dilations cycle 1, 2, 4).
    out_chans : int
        Embedding channels (the prompt encoder's ``embed_dim``).
    """

    def __init__(
        self,
        img_size: int = 256,
        widths: tuple[int, int, int] = (24, 48, 64),
        depth: int = 3,
        out_chans: int = 32,
    ) -> None:
        super().__init__()
        self.img_size = img_size  # read by SamPredictor and Sam.preprocess
        w1, w2, w3 = widths
        self.stem = nn.Sequential(_down(3, w1), _down(w1, w2))
        self.blocks = nn.Sequential(*[_Block(w2, dilation=(1, 2, 4)[i % 3]) for i in range(depth)])
        self.context = nn.Sequential(_down(w2, w3), _Block(w3), _Block(w3, dilation=2))
        self.merge = nn.Conv2d(w3, w2, 1)
        self.neck = nn.Sequential(
            nn.Conv2d(w2, out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode a (B, 3, img_size, img_size) normalised batch to (B, C, S, S), S = img_size/4."""
        x = self.blocks(self.stem(x))
        ctx = self.merge(self.context(x))
        x = x + F.interpolate(ctx, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.neck(x)


def build_cnn_encoder(cfg: SamConfig) -> nn.Module:
    """Build a :class:`SmallCNNEncoder` from a config (``encoder="cnn"``, ``patch_size=4``).

    ``cfg.encoder_options`` may set ``widths`` (three multiples of 4, for the group norms)
    and ``depth``; a config the encoder cannot honour raises :class:`CheckpointError`.
    """
    opts = dict(cfg.encoder_options)
    widths = opts.get("widths", (24, 48, 64))
    depth = opts.get("depth", cfg.depth)
    hi = INT_BOUNDS["embed_dim"][1]
    if cfg.patch_size != 4:
        raise CheckpointError(f"the CNN encoder needs patch_size 4, got {cfg.patch_size}")
    if (
        not isinstance(widths, (list, tuple))
        or len(widths) != 3
        or not all(type(w) is int and 4 <= w <= hi and w % 4 == 0 for w in widths)
    ):
        raise CheckpointError(
            f"the CNN encoder needs three widths, multiples of 4 up to {hi}, got {widths!r}"
        )
    lo, hi = INT_BOUNDS["depth"]
    if type(depth) is not int or not lo <= depth <= hi:
        raise CheckpointError(f"the CNN encoder depth must be in {lo}..{hi}, got {depth!r}")
    return SmallCNNEncoder(
        img_size=cfg.img_size,
        widths=tuple(widths),
        depth=depth,
        out_chans=cfg.prompt_embed_dim,
    )


ENCODERS.setdefault("cnn", build_cnn_encoder)

# The bundled demo model: 256 px input, 64 x 64 x 64 embedding, a narrow SAM decoder.
SMALL_CNN = SamConfig(
    encoder="cnn",
    img_size=256,
    patch_size=4,
    embed_dim=64,
    depth=4,
    num_heads=1,
    global_attn_indexes=(),
    window_size=0,
    prompt_embed_dim=64,
    mask_in_chans=16,
    decoder_depth=2,
    decoder_mlp_dim=256,
    decoder_num_heads=2,
    iou_head_depth=3,
    iou_head_hidden_dim=64,
    encoder_options={"widths": [32, 64, 128], "depth": 4},
)


def sharpen_prompt_positions(model: nn.Module, seed: int = 0, max_scale: float = 16.0) -> None:
    """Redraw the prompt encoder's random Fourier position features with finer frequencies.

    SAM draws them from N(0, 1): with only ``prompt_embed_dim / 2`` features (16 here) the
    finest period is about a quarter of the image, too coarse to tell neighbouring nuclei
    apart, and a convolutional encoder adds no absolute position of its own. Column ``j``
    is scaled by a log-spaced factor from 1 to ``max_scale`` so that coarse and fine
    positions are both represented. The matrix is a buffer saved in the checkpoint, so
    loading needs nothing special. Call once, before training from scratch.
    """
    pe = model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    gen = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, torch.log10(torch.tensor(max_scale)), pe.shape[1])
    with torch.no_grad():
        pe.copy_(torch.randn(pe.shape, generator=gen) * scales)
