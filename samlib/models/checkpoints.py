"""Reading, checking and writing SAM checkpoint files, safely.

Files are read with ``torch.load(map_location="cpu", weights_only=True)``; one that needs
full unpickling (which can run arbitrary code) is refused with
:class:`~samlib.errors.UnsafeCheckpointError` unless the caller opts in.

Nothing in a file is trusted: a file that is not a ``torch.save`` container, a config out
of the bounds in :mod:`samlib.models.arch`, a model of more than ``MAX_MODEL_NUMEL``
numbers (counted on the meta device, before anything is allocated), weights whose names or
shapes differ from the model's, and NaN or infinite weights are each refused with a
one-line :class:`~samlib.errors.CheckpointError`. Files are written atomically.

Formats understood:

- ``"sam"``: a plain state dict, as the official SAM checkpoints;
- ``"micro_sam"``: a plain state dict or ``{"model_state": ...}`` whose keys may carry a
  ``"sam."`` prefix, as micro-sam's fine-tuned models;
- ``"samlib"``: ``{"config": SamConfig.to_dict(), "state_dict": ..., "meta": {...}}``, written
  by :func:`save_checkpoint`.
"""

from __future__ import annotations

import hashlib
import math
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
from samlib.models.arch import ENCODERS, MAX_MODEL_NUMEL, SamConfig, build_sam, detect_config

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


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (torch's run over many lines)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(exc).__name__


def _check_header(path: Path) -> None:
    """Refuse a file that is none of the containers ``torch.save`` writes, before unpickling.

    PyTorch writes a zip archive (since 1.6), earlier versions a pickle (protocol 2 or
    later, first byte 0x80) or, before 0.4, a tar archive.
    """
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith((b"PK\x03\x04", b"\x80")) or head[257:262] == b"ustar":
        return
    raise CheckpointError(
        f"{path} is not a PyTorch checkpoint (neither a zip archive nor a pickle); "
        f"it starts with {head[:16]!r}"
    )


def _torch_load(path: Path, allow_pickle: bool) -> Any:
    _check_header(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        refused = [ln for ln in lines if "GLOBAL" in ln][:1]
        if not refused and not allow_pickle:
            # The weights-only unpickler names the opcode it stopped at on a later line.
            reason = next((ln for ln in lines if ln.startswith("Unsupported")), _first_line(exc))
            raise CheckpointError(
                f"{path} is not a readable PyTorch checkpoint (the safe unpickler stopped "
                f"at: {reason})"
            ) from exc
        if not allow_pickle:
            raise UnsafeCheckpointError(
                f"{path} holds Python objects that need full unpickling, which can run "
                "arbitrary code; load it only if you trust its source (allow_pickle=True) "
                f"[{refused[0]}]"
            ) from exc
    except MemoryError as exc:
        raise CheckpointError(f"{path}: not enough memory to read this checkpoint") from exc
    except Exception as exc:  # a damaged or foreign file makes the unpickler raise anything
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated, damaged or not a PyTorch "
            f"file): {_first_line(exc)}"
        ) from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # an arbitrary pickle can raise anything
        raise CheckpointError(f"{path} could not be unpickled: {_first_line(exc)}") from exc


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
        try:
            config = SamConfig.from_dict(obj["config"])
        except CheckpointError as exc:
            raise CheckpointError(f"{p}: {exc}") from exc
        meta = _read_meta(obj.get("meta"), p)
        state = obj["state_dict"]
    elif "model_state" in obj:
        state = obj["model_state"]
    elif "model" in obj and isinstance(obj["model"], Mapping):
        state = obj["model"]
    else:
        state = obj
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{p}: the weights are a {type(state).__name__}, not a dict")
    odd_keys = [k for k in state if not isinstance(k, str)]
    if odd_keys:
        raise CheckpointError(f"{p}: weight names that are not text: {odd_keys[:5]!r:.200}")
    state = _strip_prefix(state, "module.")
    if any(k.startswith("sam.") for k in state):
        # micro-sam: the SAM weights carry a "sam." prefix; other entries belong to
        # other networks trained alongside (e.g. an instance-segmentation decoder).
        state = {k[4:]: v for k, v in state.items() if k.startswith("sam.")}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{p}: entries that are not tensors: {bad[:5]}")
    if config is None:
        try:
            config = detect_config(state)
        except CheckpointError as exc:
            raise CheckpointError(f"{p}: {exc}") from exc
    return dict(state), config, meta


def _read_meta(raw: Any, path: Path) -> dict[str, Any]:
    """The ``meta`` block of a samlib file; a stored ``mask_threshold`` must be finite."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path}: 'meta' is a {type(raw).__name__}, not a mapping")
    meta = dict(raw)
    if "mask_threshold" in meta:
        thr = meta["mask_threshold"]
        if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not math.isfinite(thr):
            raise CheckpointError(
                f"{path}: the stored mask_threshold must be a finite number, got {thr!r:.80}"
            )
    return meta


def _skeleton(config: SamConfig, source: str) -> Sam:
    """A model of ``config`` on the meta device (shapes, no memory), refused if too big."""
    if config.encoder not in ENCODERS:
        for module in ENCODER_PLUGINS:
            try:
                import_module(module)
            except ImportError:
                continue
    try:
        with torch.device("meta"):
            skeleton = build_sam(config)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{source}: cannot build this model: {_first_line(exc)}") from exc
    numel = sum(t.numel() for t in skeleton.state_dict().values())
    if numel > MAX_MODEL_NUMEL:
        raise CheckpointError(
            f"{source}: the model would hold {numel / 1e6:,.0f}M numbers "
            f"({numel * 4 / 1e9:,.1f} GB), more than the {MAX_MODEL_NUMEL / 1e6:,.0f}M "
            "allowed (SAM ViT-H: 636M)"
        )
    return skeleton


def _check_tensors(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str
) -> None:
    """Refuse weights whose names, shapes or kinds differ from the model's."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not match the detected architecture; missing "
            f"{missing[:5]} ({len(missing)} in all), unexpected {unexpected[:5]} "
            f"({len(unexpected)} in all)"
        )
    wrong = [k for k, t in expected.items() if tuple(state[k].shape) != tuple(t.shape)]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{source}: tensor shapes do not match the model: {k} is "
            f"{tuple(state[k].shape)}, the model needs {tuple(expected[k].shape)} "
            f"({len(wrong)} tensors differ)"
        )
    for k, t in state.items():
        if t.layout != torch.strided or (
            expected[k].is_floating_point() and not t.is_floating_point()
        ):
            raise CheckpointError(
                f"{source}: tensor {k} holds {t.dtype} ({t.layout}), not dense floats"
            )


def _all_finite(t: torch.Tensor) -> bool:
    # A sum is finite only if every term is (inf - inf is NaN), and summing is several
    # times faster than an element-wise test; a non-finite sum may also be an overflow of
    # large finite values, so that case is tested element by element.
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def _check_finite(model: Sam, source: str) -> None:
    """Refuse weights with NaN or infinite values: they give empty or garbage masks."""
    bad = [k for k, t in model.state_dict().items() if t.is_floating_point() and not _all_finite(t)]
    if bad:
        raise CheckpointError(
            f"{source}: tensor {bad[0]} holds NaN or infinite values ({len(bad)} in all)"
        )


def model_from_state(state: Mapping[str, torch.Tensor], config: SamConfig, source: str) -> Sam:
    """Build a SAM of ``config`` and load ``state`` strictly (on the CPU, eval mode).

    Names, shapes and the model's size are checked before any memory is allocated, and
    the loaded weights must be finite; any mismatch raises a one-line
    :class:`~samlib.errors.CheckpointError`.
    """
    skeleton = _skeleton(config, source)
    _check_tensors(state, skeleton.state_dict(), source)
    try:
        if config.encoder == "vit":
            # Skip random initialisation (seconds for vit_h): every persistent tensor is
            # overwritten by the checkpoint; the only non-persistent buffers are the pixel
            # mean and std, which are constants.
            model = skeleton.to_empty(device="cpu")
            model.pixel_mean = torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
            model.pixel_std = torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1)
        else:
            model = build_sam(config)
        model.load_state_dict(state)
    except (MemoryError, RuntimeError) as exc:
        raise CheckpointError(f"{source}: could not load the weights: {_first_line(exc)}") from exc
    _check_finite(model, source)
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
    threshold = float(model.mask_threshold)
    if not math.isfinite(threshold):
        raise CheckpointError(f"the model's mask_threshold is {threshold}; it must be finite")
    if threshold != 0.0:
        payload["meta"]["mask_threshold"] = threshold
    try:
        return write_atomic(p, lambda f: torch.save(payload, f))
    except (OSError, RuntimeError) as exc:
        # torch reports a short write (a full disk) as a RuntimeError about file positions.
        hint = " (a short write: is the disk full?)" if isinstance(exc, RuntimeError) else ""
        raise CheckpointError(f"could not write checkpoint {p}{hint}: {_first_line(exc)}") from exc
