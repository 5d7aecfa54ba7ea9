"""SAM architectures: a config dataclass, a builder, and detection from a state dict.

The official checkpoints (vit_b, vit_l, vit_h) differ only in the image encoder's width,
depth and heads. Smaller variants (tests, the bundled demo model) use the same
``segment_anything`` modules with other sizes, so the predictor and the automatic mask
generator work unchanged on all of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from typing import Any

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from samlib.errors import CheckpointError


@dataclass(frozen=True)
class SamConfig:
    """Every size that defines a SAM model. Defaults are SAM ViT-B."""

    encoder: str = "vit"
    img_size: int = 1024
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3
    encoder_options: dict[str, Any] = field(default_factory=dict)

    @property
    def embedding_size(self) -> int:
        """Side of the square image embedding, in tokens."""
        return self.img_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, stored inside samlib checkpoints."""
        d = asdict(self)
        d["global_attn_indexes"] = list(self.global_attn_indexes)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SamConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise CheckpointError(f"unknown model config keys: {sorted(unknown)}")
        d = dict(d)
        if "global_attn_indexes" in d:
            d["global_attn_indexes"] = tuple(int(i) for i in d["global_attn_indexes"])
        return cls(**d)


VIT_B = SamConfig()
VIT_L = SamConfig(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23))
VIT_H = SamConfig(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31))
# A tiny ViT used by tests and the self-test: seconds on a CPU, same code paths as SAM.
VIT_TINY = SamConfig(
    img_size=256,
    patch_size=16,
    embed_dim=32,
    depth=2,
    num_heads=2,
    global_attn_indexes=(1,),
    window_size=4,
    prompt_embed_dim=32,
    mask_in_chans=8,
    decoder_mlp_dim=64,
    decoder_num_heads=2,
    iou_head_hidden_dim=32,
)


def _vit_encoder(cfg: SamConfig) -> torch.nn.Module:
    return ImageEncoderViT(
        depth=cfg.depth,
        embed_dim=cfg.embed_dim,
        img_size=cfg.img_size,
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=cfg.num_heads,
        patch_size=cfg.patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=cfg.global_attn_indexes,
        window_size=cfg.window_size,
        out_chans=cfg.prompt_embed_dim,
    )


# Image-encoder builders by ``SamConfig.encoder``; other modules may register more.
ENCODERS: dict[str, Callable[[SamConfig], torch.nn.Module]] = {"vit": _vit_encoder}


def build_sam(cfg: SamConfig) -> Sam:
    """Build a randomly initialised SAM of the given sizes (eval mode, on the CPU)."""
    if cfg.encoder not in ENCODERS:
        raise CheckpointError(f"unknown image encoder {cfg.encoder!r}; known: {sorted(ENCODERS)}")
    emb = cfg.embedding_size
    sam = Sam(
        image_encoder=ENCODERS[cfg.encoder](cfg),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg.prompt_embed_dim,
            image_embedding_size=(emb, emb),
            input_image_size=(cfg.img_size, cfg.img_size),
            mask_in_chans=cfg.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=cfg.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=cfg.decoder_depth,
                embedding_dim=cfg.prompt_embed_dim,
                mlp_dim=cfg.decoder_mlp_dim,
                num_heads=cfg.decoder_num_heads,
            ),
            transformer_dim=cfg.prompt_embed_dim,
            iou_head_depth=cfg.iou_head_depth,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def _count(state: Mapping[str, Any], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.match(k))})


def detect_config(state: Mapping[str, torch.Tensor]) -> SamConfig:
    """Infer the ViT-SAM sizes from a state dict's tensor shapes.

    Raises :class:`CheckpointError` if the keys are not those of a SAM model.
    The decoder's head count is not stored in the weights; SAM's 8 is assumed.
    """
    try:
        proj = state["image_encoder.patch_embed.proj.weight"]
        pos = state["image_encoder.pos_embed"]
        embed_dim, patch = int(proj.shape[0]), int(proj.shape[-1])
        grid = int(pos.shape[1])
        depth = _count(state, r"image_encoder\.blocks\.(\d+)\.")
        glob, window, head_dim = [], None, None
        for i in range(depth):
            rel = state[f"image_encoder.blocks.{i}.attn.rel_pos_h"]
            head_dim = int(rel.shape[1])
            size = (int(rel.shape[0]) + 1) // 2
            if size == grid:
                glob.append(i)
            else:
                window = size
        out_chans = int(state["image_encoder.neck.0.weight"].shape[0])
        n_iou = _count(state, r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\.")
        cfg = SamConfig(
            img_size=grid * patch,
            patch_size=patch,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=embed_dim // head_dim,
            global_attn_indexes=tuple(glob),
            window_size=window or 14,
            prompt_embed_dim=out_chans,
            mask_in_chans=int(state["prompt_encoder.mask_downscaling.3.weight"].shape[0]),
            decoder_depth=_count(state, r"mask_decoder\.transformer\.layers\.(\d+)\."),
            decoder_mlp_dim=int(
                state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]
            ),
            decoder_num_heads=8 if out_chans % 8 == 0 else 1,
            iou_head_depth=n_iou,
            iou_head_hidden_dim=int(
                state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]
            ),
            num_multimask_outputs=int(state["mask_decoder.mask_tokens.weight"].shape[0]) - 1,
        )
    except (KeyError, IndexError, AttributeError, TypeError) as exc:
        raise CheckpointError(
            f"the weights are not those of a SAM ViT model (missing or odd tensor: {exc})"
        ) from exc
    if depth == 0:
        raise CheckpointError("the weights hold no image-encoder blocks")
    return cfg
