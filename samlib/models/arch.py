"""SAM architectures: a config dataclass, a builder, and detection from a state dict.

The official checkpoints (vit_b, vit_l, vit_h) differ only in the image encoder's width,
depth and heads. Smaller variants (tests, the bundled demo model) use the same
``segment_anything`` modules with other sizes, so the predictor and the automatic mask
generator work unchanged on all of them.

A config comes from files people download, so :class:`SamConfig` checks every field when
it is made: a type, a range (:data:`INT_BOUNDS`) and sizes that fit together, in plain
code rather than the asserts inside ``segment_anything``, which ``python -O`` drops.
"""

from __future__ import annotations

import math
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

# Bounds on every size, wide enough for the known architectures with room to spare (SAM
# vit_b/l/h; MobileSAM-sized configs; the tiny test ViT and the demo CNN) and narrow enough
# that a crafted config is refused before anything is built. The comments give the largest
# values the known models use.
INT_BOUNDS: dict[str, tuple[int, int]] = {
    "img_size": (1, 2048),  # SAM, MobileSAM: 1024
    "patch_size": (1, 64),  # SAM: 16, demo CNN: 4
    "embed_dim": (1, 2048),  # vit_h: 1280
    "depth": (1, 64),  # vit_h: 32
    "num_heads": (1, 64),  # vit_l, vit_h: 16
    "window_size": (0, 128),  # SAM: 14 (0: global attention in every block)
    "prompt_embed_dim": (8, 2048),  # SAM: 256
    "mask_in_chans": (4, 1024),  # SAM: 16
    "decoder_depth": (1, 16),  # SAM: 2
    "decoder_mlp_dim": (1, 16384),  # SAM: 2048
    "decoder_num_heads": (1, 64),  # SAM: 8
    "iou_head_depth": (1, 16),  # SAM: 3
    "iou_head_hidden_dim": (1, 4096),  # SAM: 256
    "num_multimask_outputs": (1, 16),  # SAM: 3
}
# Numbers (parameters and buffers) a model may hold: vit_h has 636M (2.5 GB as float32).
MAX_MODEL_NUMEL = 2_000_000_000
_ENCODER_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_MAX_OPTIONS = 32  # entries in encoder_options, and items in one of its lists
_MAX_OPTION_INT = 16384


def _bad(message: str) -> CheckpointError:
    return CheckpointError(f"model config: {message}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_option(key: str, value: Any) -> None:
    items = value if isinstance(value, (list, tuple)) else [value]
    if len(items) > _MAX_OPTIONS:
        raise _bad(f"encoder_options[{key!r}] has {len(items)} items, at most {_MAX_OPTIONS}")
    for v in items:
        if v is None or isinstance(v, bool):
            continue
        if _is_int(v) and abs(v) <= _MAX_OPTION_INT:
            continue
        if isinstance(v, float) and math.isfinite(v) and abs(v) <= _MAX_OPTION_INT:
            continue
        if isinstance(v, str) and len(v) <= 64:
            continue
        raise _bad(
            f"encoder_options[{key!r}] holds {v!r:.80}; allowed: None, booleans, numbers up "
            f"to {_MAX_OPTION_INT} in size, short strings, and flat lists of these"
        )


@dataclass(frozen=True)
class SamConfig:
    """Every size that defines a SAM model. Defaults are SAM ViT-B.

    Every field is checked when a config is made (also under ``python -O``): integers
    within :data:`INT_BOUNDS`, sizes that fit together (``patch_size`` divides
    ``img_size``, head counts divide widths...), so that a config read from a file cannot
    ask for an absurd model. A bad one raises :class:`~samlib.errors.CheckpointError`.
    """

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

    def __post_init__(self) -> None:
        if isinstance(self.global_attn_indexes, list):
            object.__setattr__(self, "global_attn_indexes", tuple(self.global_attn_indexes))
        self._check_types()
        self._check_sizes()

    def _check_types(self) -> None:
        if not isinstance(self.encoder, str) or not _ENCODER_NAME.fullmatch(self.encoder):
            raise _bad(f"encoder must be a short lower-case name, got {self.encoder!r:.80}")
        for name, (lo, hi) in INT_BOUNDS.items():
            value = getattr(self, name)
            if not _is_int(value) or not lo <= value <= hi:
                raise _bad(f"{name} must be an integer in {lo}..{hi}, got {value!r:.80}")
        gai = self.global_attn_indexes
        if not isinstance(gai, tuple) or not all(_is_int(i) for i in gai):
            raise _bad(f"global_attn_indexes must be a list of integers, got {gai!r:.80}")
        opts = self.encoder_options
        if not isinstance(opts, dict) or not all(isinstance(k, str) for k in opts):
            raise _bad(f"encoder_options must be a dict with text keys, got {opts!r:.80}")
        if len(opts) > _MAX_OPTIONS:
            raise _bad(f"encoder_options has {len(opts)} entries, at most {_MAX_OPTIONS}")
        for key, value in opts.items():
            _check_option(key, value)

    def _check_sizes(self) -> None:
        if self.img_size % self.patch_size:
            raise _bad(f"patch_size {self.patch_size} does not divide img_size {self.img_size}")
        gai = self.global_attn_indexes
        if list(gai) != sorted(set(gai)) or any(not 0 <= i < self.depth for i in gai):
            raise _bad(
                f"global_attn_indexes must be distinct block numbers in 0..{self.depth - 1} "
                f"in increasing order, got {list(gai)}"
            )
        if self.encoder == "vit" and self.embed_dim % self.num_heads:
            raise _bad(f"num_heads {self.num_heads} does not divide embed_dim {self.embed_dim}")
        # The mask decoder upscales to prompt_embed_dim / 8 channels, the prompt encoder
        # downscales masks through mask_in_chans / 4, and the decoder's cross-attention
        # splits prompt_embed_dim / 2 channels into heads.
        if self.prompt_embed_dim % 8:
            raise _bad(f"prompt_embed_dim must be a multiple of 8, got {self.prompt_embed_dim}")
        if self.mask_in_chans % 4:
            raise _bad(f"mask_in_chans must be a multiple of 4, got {self.mask_in_chans}")
        if (self.prompt_embed_dim // 2) % self.decoder_num_heads:
            raise _bad(
                f"decoder_num_heads {self.decoder_num_heads} does not divide half of "
                f"prompt_embed_dim ({self.prompt_embed_dim // 2})"
            )

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
        """Inverse of :meth:`to_dict`; unknown keys and out-of-bounds values are an error.

        Keys left out take ViT-B's values, as in files written before they existed.
        """
        if not isinstance(d, Mapping):
            raise _bad(f"expected a mapping of sizes, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = [k for k in d if k not in names]
        if unknown:
            shown = sorted(repr(k)[:40] for k in unknown)[:5]
            raise CheckpointError(f"unknown model config keys: {shown} ({len(unknown)} in all)")
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
    return len({m.group(1) for k in state if isinstance(k, str) and (m := rx.match(k))})


def detect_config(state: Mapping[str, torch.Tensor]) -> SamConfig:
    """Infer the ViT-SAM sizes from a state dict's tensor shapes.

    Raises :class:`CheckpointError` if the keys are not those of a SAM model or the sizes
    are out of :data:`INT_BOUNDS`. The decoder's head count is not stored in the weights;
    SAM's 8 is assumed.
    """
    depth = _count(state, r"image_encoder\.blocks\.(\d+)\.")
    if depth == 0:
        raise CheckpointError("the weights are not those of a SAM ViT model (no encoder blocks)")
    if depth > INT_BOUNDS["depth"][1]:
        raise CheckpointError(f"the weights hold {depth} image-encoder blocks, more than any SAM")
    try:
        proj = state["image_encoder.patch_embed.proj.weight"]
        pos = state["image_encoder.pos_embed"]
        embed_dim, patch = int(proj.shape[0]), int(proj.shape[-1])
        grid = int(pos.shape[1])
        glob, window, head_dim = [], None, 0
        for i in range(depth):
            rel = state[f"image_encoder.blocks.{i}.attn.rel_pos_h"]
            head_dim = int(rel.shape[1])
            size = (int(rel.shape[0]) + 1) // 2
            if size == grid:
                glob.append(i)
            else:
                window = size
        if head_dim < 1 or embed_dim % head_dim:
            raise CheckpointError(
                f"the attention head width {head_dim} does not divide the encoder width {embed_dim}"
            )
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
            decoder_num_heads=8 if (out_chans // 2) % 8 == 0 else 1,
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
    return cfg
