import pytest
import torch

from samlib.errors import CheckpointError
from samlib.models.arch import VIT_B, VIT_H, VIT_L, VIT_TINY, SamConfig, build_sam, detect_config


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
