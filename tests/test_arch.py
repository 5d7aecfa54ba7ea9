import pytest
import torch

from samlib.errors import CheckpointError
from samlib.models.arch import VIT_B, VIT_H, VIT_L, VIT_TINY, SamConfig, build_sam, detect_config
from samlib.models.small_encoder import SMALL_CNN


def _meta_state(cfg: SamConfig) -> dict:
    """State dict of a model built on the meta device: real shapes, no memory."""
    with torch.device("meta"):
        return build_sam(cfg).state_dict()


@pytest.mark.parametrize("cfg", [VIT_B, VIT_L, VIT_H], ids=["vit_b", "vit_l", "vit_h"])
def test_detect_official_architectures(cfg):
    assert detect_config(_meta_state(cfg)) == cfg


def test_detect_tiny_encoder_sizes():
    got = detect_config(_meta_state(VIT_TINY))
    # the decoder's head count is not stored in weights; everything else is
    assert got.embed_dim == 32 and got.depth == 2 and got.num_heads == 2
    assert got.global_attn_indexes == (1,) and got.window_size == 4 and got.img_size == 256


def test_detect_rejects_foreign_weights():
    with pytest.raises(CheckpointError, match="not those of a SAM"):
        detect_config({"conv.weight": torch.zeros(3, 3)})


def test_config_dict_round_trip():
    assert SamConfig.from_dict(VIT_TINY.to_dict()) == VIT_TINY
    with pytest.raises(CheckpointError, match="unknown model config keys"):
        SamConfig.from_dict({"colour": "blue"})


def test_unknown_encoder_is_refused():
    with pytest.raises(CheckpointError, match="unknown image encoder"):
        build_sam(SamConfig(encoder="resnet"))


# Field values no SAM has; each must be refused by name (a crafted file sets them).
BAD_FIELDS = [
    ("patch_size", 0),
    ("patch_size", 24),  # does not divide img_size 256
    ("img_size", 1 << 20),
    ("embed_dim", 100_000),
    ("embed_dim", True),  # a bool is not a size
    ("embed_dim", 32.0),
    ("depth", 10**9),
    ("num_heads", 5),  # does not divide embed_dim 32
    ("global_attn_indexes", [5]),  # beyond depth 2
    ("global_attn_indexes", ["1"]),
    ("window_size", -1),
    ("prompt_embed_dim", 36),  # the decoder upscales to prompt_embed_dim / 8 channels
    ("mask_in_chans", 6),
    ("decoder_num_heads", 3),
    ("decoder_mlp_dim", 1 << 30),
    ("num_multimask_outputs", 0),
    ("encoder", "vit\nx"),
    ("encoder_options", {"depth": 10**9}),
    ("encoder_options", {"widths": [1.5e300]}),
]


@pytest.mark.parametrize(("name", "value"), BAD_FIELDS, ids=[f"{n}={v!r}" for n, v in BAD_FIELDS])
def test_config_fields_out_of_bounds_refused(name, value):
    with pytest.raises(CheckpointError, match=name) as info:
        SamConfig.from_dict({**VIT_TINY.to_dict(), name: value})
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"patch_size": 8}, "patch_size 4"),
        ({"encoder_options": {"widths": [30, 64, 128]}}, "multiples of 4"),
        ({"encoder_options": {"widths": [32, 64, 128], "depth": 0}}, "depth"),
    ],
)
def test_cnn_encoder_refuses_sizes_it_cannot_build(change, match):
    with pytest.raises(CheckpointError, match=match):
        build_sam(SamConfig.from_dict({**SMALL_CNN.to_dict(), **change}))


# A MobileSAM-sized config (TinyViT encoder options, SAM's decoder), as such models will be.
MOBILE_SAM = SamConfig(
    encoder="tiny_vit",
    embed_dim=320,
    depth=12,
    num_heads=10,
    global_attn_indexes=(),
    window_size=7,
    encoder_options={
        "embed_dims": [64, 128, 160, 320],
        "depths": [2, 2, 6, 2],
        "num_heads": [2, 4, 5, 10],
        "window_sizes": [7, 7, 14, 7],
        "mlp_ratio": 4.0,
        "drop_path_rate": 0.0,
        "use_checkpoint": False,
    },
)


@pytest.mark.parametrize(
    "cfg",
    [VIT_B, VIT_L, VIT_H, VIT_TINY, SMALL_CNN, MOBILE_SAM],
    ids=["vit_b", "vit_l", "vit_h", "vit_tiny", "small_cnn", "mobile_sam"],
)
def test_known_architectures_are_within_bounds(cfg):
    assert SamConfig.from_dict(cfg.to_dict()) == cfg
