"""SAM models.

Architectures, the registry, checkpoint files, downloads, loading, encoder speed-ups and image
embeddings.

May import: samlib.errors, samlib.files, samlib.workspace, samlib.image.
"""

from __future__ import annotations

from samlib.models.accel import accelerate
from samlib.models.arch import (
    ENCODERS,
    VIT_B,
    VIT_H,
    VIT_L,
    VIT_TINY,
    SamConfig,
    build_sam,
    detect_config,
)
from samlib.models.checkpoints import file_sha256, read_checkpoint
from samlib.models.download import download_file
from samlib.models.embeddings import (
    Embedding,
    EmbeddingCache,
    check_embedding,
    compute_embedding,
    default_cache_dir,
    embedding_key,
)
from samlib.models.loading import (
    REGISTRY,
    cache_dir,
    checkpoint_path,
    default_model_name,
    download_model,
    load_model,
    model_status,
    pick_device,
    save_checkpoint,
    suggested_params,
    verify_cached,
)
from samlib.models.registry import ModelEntry, register_model
from samlib.models.small_encoder import SMALL_CNN, sharpen_prompt_positions

__all__ = [
    "accelerate",
    "ENCODERS",
    "SamConfig",
    "VIT_B",
    "VIT_H",
    "VIT_L",
    "VIT_TINY",
    "build_sam",
    "detect_config",
    "file_sha256",
    "read_checkpoint",
    "download_file",
    "Embedding",
    "EmbeddingCache",
    "check_embedding",
    "compute_embedding",
    "default_cache_dir",
    "embedding_key",
    "REGISTRY",
    "cache_dir",
    "checkpoint_path",
    "default_model_name",
    "download_model",
    "load_model",
    "model_status",
    "pick_device",
    "save_checkpoint",
    "suggested_params",
    "verify_cached",
    "ModelEntry",
    "register_model",
    "SMALL_CNN",
    "sharpen_prompt_positions",
]
