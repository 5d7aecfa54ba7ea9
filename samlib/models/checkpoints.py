"""Reading, checking and writing SAM checkpoint files, safely.

Files are read with ``torch.load(map_location="cpu", weights_only=True)``; one that needs
full unpickling (which can run arbitrary code) is refused with
:class:`~samlib.errors.UnsafeCheckpointError` unless the caller opts in.

Formats understood:

- ``"sam"``: a plain state dict, as the official SAM checkpoints;
- ``"micro_sam"``: a plain state dict or ``{"model_state": ...}`` whose keys may carry a
  ``"sam."`` prefix, as micro-sam's fine-tuned models;
- ``"samlib"``: ``{"config": SamConfig.to_dict(), "state_dict": ..., "meta": {...}}``, written
  by :func:`save_checkpoint`.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Mapping
from importlib import import_module
from pathlib import Path
from typing import Any

import torch
from segment_anything.modeling import Sam

from samlib import __version__
from samlib.errors import CheckpointError, UnsafeCheckpointError
from samlib.files import write_atomic
from samlib.models.arch import ENCODERS, SamConfig, build_sam, detect_config

__all__ = ["file_sha256", "model_from_state", "read_checkpoint", "save_checkpoint"]

# Modules that register extra image encoders in ``samlib.models.arch.ENCODERS`` when imported.
ENCODER_PLUGINS: list[str] = ["samlib.models.small_encoder"]

_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file, remembered per (path, size, mtime) for this process."""
    p = Path(path)
    st = p.stat()
    memo_key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if memo_key in _HASH_MEMO:
        return _HASH_MEMO[memo_key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    _HASH_MEMO[memo_key] = h.hexdigest()
    return _HASH_MEMO[memo_key]


def _torch_load(path: Path, allow_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower() and "weights_only" not in str(exc):
            raise CheckpointError(f"{path} is not a readable checkpoint: {exc}") from exc
        if not allow_pickle:
            refused = [ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln][:1]
            raise UnsafeCheckpointError(
                f"{path} holds Python objects that need full unpickling, which can run "
                "arbitrary code; load it only if you trust its source (allow_pickle=True)"
                + (f" [{refused[0]}]" if refused else "")
            ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or damaged?): {exc}"
        ) from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # an arbitrary pickle can raise anything
        raise CheckpointError(f"{path} could not be unpickled: {exc}") from exc


def _strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def read_checkpoint(
    path: str | os.PathLike[str], *, allow_pickle: bool = False
) -> tuple[dict[str, torch.Tensor], SamConfig, dict[str, Any]]:
    """Read a checkpoint file of any supported format on the CPU.

    Returns
    -------
    state_dict, config, meta
        Tensors keyed as ``segment_anything.Sam`` expects, the architecture (stored in
        samlib files, otherwise detected from tensor shapes), and stored metadata.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint file not found: {p}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint file is empty: {p}")
    obj = _torch_load(p, allow_pickle)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{p} holds a {type(obj).__name__}, not a state dict")
    meta: dict[str, Any] = {}
    config: SamConfig | None = None
    if "state_dict" in obj and "config" in obj:
        if not isinstance(obj["config"], Mapping):
            raise CheckpointError(f"{p}: 'config' is not a mapping")
        config = SamConfig.from_dict(obj["config"])
        meta = dict(obj.get("meta") or {})
        state = obj["state_dict"]
    elif "model_state" in obj:
        state = obj["model_state"]
    elif "model" in obj and isinstance(obj["model"], Mapping):
        state = obj["model"]
    else:
        state = obj
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{p}: the weights are a {type(state).__name__}, not a dict")
    state = _strip_prefix(state, "module.")
    if any(k.startswith("sam.") for k in state):
        # micro-sam: the SAM weights carry a "sam." prefix; other entries belong to
        # other networks trained alongside (e.g. an instance-segmentation decoder).
        state = {k[4:]: v for k, v in state.items() if k.startswith("sam.")}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{p}: entries that are not tensors: {bad[:5]}")
    if config is None:
        config = detect_config(state)
    return dict(state), config, meta


def _build(config: SamConfig) -> Sam:
    if config.encoder not in ENCODERS:
        for module in ENCODER_PLUGINS:
            try:
                import_module(module)
            except ImportError:
                continue
    if config.encoder == "vit":
        # Skip random initialisation (seconds for vit_h): every persistent tensor is
        # overwritten by the checkpoint; the only non-persistent buffers are the pixel
        # mean and std, which are constants.
        with torch.device("meta"):
            model = build_sam(config)
        model = model.to_empty(device="cpu")
        model.pixel_mean = torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
        model.pixel_std = torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1)
        return model
    return build_sam(config)


def model_from_state(state: Mapping[str, torch.Tensor], config: SamConfig, source: str) -> Sam:
    """Build a SAM of ``config`` and load ``state`` strictly (on the CPU, eval mode)."""
    model = _build(config)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: tensor shapes do not match the model: {exc}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{source}: weights do not match the detected architecture; missing "
            f"{result.missing_keys[:5]} ({len(result.missing_keys)} in all), unexpected "
            f"{result.unexpected_keys[:5]} ({len(result.unexpected_keys)} in all)"
        )
    return model.eval()


def save_checkpoint(
    model: Sam,
    path: str | os.PathLike[str],
    config: SamConfig,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` in the samlib format, loadable with ``weights_only=True``.

    The file is ``{"config": config.to_dict(), "state_dict": ..., "meta": {...}}``;
    ``extra`` (plain JSON-like values) goes into ``meta``, and so does the model's
    ``mask_threshold`` where it is not SAM's 0.0. Written atomically.
    """

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    payload = {
        "config": config.to_dict(),
        "state_dict": state,
        "meta": {"samlib_version": __version__, **dict(extra or {})},
    }
    if float(model.mask_threshold) != 0.0:
        payload["meta"]["mask_threshold"] = float(model.mask_threshold)
    return write_atomic(p, lambda f: torch.save(payload, f))
