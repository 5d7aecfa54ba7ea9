"""The model registry, the checkpoint cache, and loading a model by name or path.

``REGISTRY`` names every known model (builder config, URL, size, SHA-256, file format).
:func:`load_model` takes a registry name or a checkpoint path and returns a
``segment_anything`` ``Sam`` in eval mode whose ``samlib_info`` attribute says which
weights it holds. Checkpoint files are read safely by :mod:`samlib.checkpoints`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from segment_anything.modeling import Sam

from samlib.arch import VIT_B, VIT_H, VIT_L, SamConfig
from samlib.checkpoints import file_sha256, model_from_state, read_checkpoint, save_checkpoint
from samlib.errors import ChecksumError, ModelNotDownloadedError, UnknownModelError

__all__ = [
    "REGISTRY",
    "ModelEntry",
    "ModelInfo",
    "ModelStatus",
    "cache_dir",
    "checkpoint_path",
    "default_model_name",
    "download_model",
    "file_sha256",
    "load_model",
    "model_status",
    "pick_device",
    "read_checkpoint",
    "register_model",
    "save_checkpoint",
]

CACHE_ENV = "SAMLIB_CACHE_DIR"
MODEL_ENV = "SAMLIB_MODEL"
_PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: how to build it and where its checkpoint comes from.

    Attributes
    ----------
    name : str
        Registry key, e.g. ``"vit_b"``.
    config : SamConfig
        Architecture (builder sizes) of the checkpoint.
    url : str or None
        Download address; ``None`` for a checkpoint shipped inside the package.
    size : int or None
        Checkpoint size in bytes, when published.
    sha256 : str or None
        Published SHA-256 (hex); ``None`` where none is published (then the hash is
        recorded on first download and verified afterwards).
    description : str
        One line for users.
    file_format : str
        ``"sam"``, ``"micro_sam"`` or ``"samlib"`` (see the module docstring).
    filename : str
        File name in the cache folder, or path relative to the ``samlib`` package folder
        when ``package_file`` is true.
    package_file : bool
        The checkpoint ships inside the package (no download).
    suggested_params : dict or None
        Segment-everything parameters suited to this model where SAM's defaults are not
        (thresholds for a model whose predicted IoU and stability are not on SAM's scale,
        ``min_mask_region_area``...); the app starts its widgets there and
        ``evaluate-model`` uses them. ``None``: SAM's defaults.
    mask_threshold : float
        Mask logit above which a pixel belongs to the mask (SAM: 0.0), set as the loaded
        model's ``mask_threshold``, which every prompt and generator path reads.
    """

    name: str
    config: SamConfig
    url: str | None
    size: int | None
    sha256: str | None
    description: str
    file_format: str
    filename: str
    package_file: bool = False
    suggested_params: dict[str, float] | None = None
    mask_threshold: float = 0.0


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is: registry name (or file stem), checkpoint SHA-256, config."""

    name: str
    sha256: str
    config: SamConfig
    path: str | None = None


@dataclass(frozen=True)
class ModelStatus:
    """Whether a registered model's checkpoint is available locally."""

    name: str
    cached: bool
    path: Path
    size: int | None
    expected_size: int | None
    partial_bytes: int


_FB = "https://dl.fbaipublicfiles.com/segment_anything"
_EBI = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io"

REGISTRY: dict[str, ModelEntry] = {
    "vit_b": ModelEntry(
        name="vit_b",
        config=VIT_B,
        url=f"{_FB}/sam_vit_b_01ec64.pth",
        size=375_042_383,
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        description="SAM ViT-B (Meta, 91M parameters): the fastest official model",
        file_format="sam",
        filename="sam_vit_b_01ec64.pth",
    ),
    "vit_l": ModelEntry(
        name="vit_l",
        config=VIT_L,
        url=f"{_FB}/sam_vit_l_0b3195.pth",
        size=1_249_524_607,
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        description="SAM ViT-L (Meta, 308M parameters)",
        file_format="sam",
        filename="sam_vit_l_0b3195.pth",
    ),
    "vit_h": ModelEntry(
        name="vit_h",
        config=VIT_H,
        url=f"{_FB}/sam_vit_h_4b8939.pth",
        size=2_564_550_879,
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        description="SAM ViT-H (Meta, 636M parameters): the largest, slowest official model",
        file_format="sam",
        filename="sam_vit_h_4b8939.pth",
    ),
    "vit_b_lm": ModelEntry(
        name="vit_b_lm",
        config=VIT_B,
        url=f"{_EBI}/diplomatic-bug/1.2/files/vit_b.pt",
        size=None,
        sha256=None,
        description="micro-sam ViT-B fine-tuned on light microscopy (cells and nuclei)",
        file_format="micro_sam",
        filename="micro_sam_vit_b_lm.pt",
    ),
    "vit_l_lm": ModelEntry(
        name="vit_l_lm",
        config=VIT_L,
        url=f"{_EBI}/idealistic-rat/1.2/files/vit_l.pt",
        size=None,
        sha256=None,
        description="micro-sam ViT-L fine-tuned on light microscopy (cells and nuclei)",
        file_format="micro_sam",
        filename="micro_sam_vit_l_lm.pt",
    ),
}

# Preferred order when choosing a default among downloaded models (microscopy first).
_PREFERENCE = ("vit_b_lm", "vit_b", "vit_l_lm", "vit_l", "vit_h")


def register_model(entry: ModelEntry, *, replace: bool = False) -> None:
    """Add ``entry`` to :data:`REGISTRY` (e.g. a small model shipped inside the package)."""
    if entry.name in REGISTRY and not replace:
        raise ValueError(f"a model named {entry.name!r} is already registered")
    if entry.url is None and not entry.package_file:
        raise ValueError(f"model {entry.name!r} needs a URL or package_file=True")
    REGISTRY[entry.name] = entry


# -- cache and device -------------------------------------------------------------------
def cache_dir() -> Path:
    """Folder holding downloaded checkpoints (``$SAMLIB_CACHE_DIR`` or the user cache)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("samlib", appauthor=False))


def checkpoint_path(name: str) -> Path:
    """Where the checkpoint of registered model ``name`` lives (whether present or not)."""
    entry = _entry(name)
    if entry.package_file:
        return _PACKAGE_DIR / entry.filename
    return cache_dir() / "checkpoints" / entry.filename


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def model_status(name: str) -> ModelStatus:
    """Report whether model ``name`` is downloaded, where, and how big."""
    entry = _entry(name)
    path = checkpoint_path(name)
    part = path.with_name(path.name + ".part")
    return ModelStatus(
        name=name,
        cached=path.is_file(),
        path=path,
        size=path.stat().st_size if path.is_file() else None,
        expected_size=entry.size,
        partial_bytes=part.stat().st_size if part.is_file() else 0,
    )


def pick_device() -> torch.device:
    """The best available device: CUDA, then Apple MPS, then CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_model_name() -> str:
    """The model to use when none is given.

    ``$SAMLIB_MODEL`` (a registry name or a checkpoint path) wins; otherwise the first
    downloaded model in the order vit_b_lm, vit_b, vit_l_lm, vit_l, vit_h; otherwise a
    model shipped inside the package; otherwise ``"vit_b"``.
    """
    env = os.environ.get(MODEL_ENV, "").strip()
    if env:
        return env
    for name in _PREFERENCE:
        if name in REGISTRY and checkpoint_path(name).is_file():
            return name
    for name, entry in REGISTRY.items():
        if entry.package_file and checkpoint_path(name).is_file():
            return name
    return "vit_b"


# -- hashing ----------------------------------------------------------------------------
def record_sha256(path: Path, sha256: str) -> None:
    """Write the sidecar ``<file>.sha256.json`` that later loads verify against."""
    st = path.stat()
    _sidecar(path).write_text(
        json.dumps({"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    )


def verify_cached(name: str) -> str:
    """Check the cached checkpoint of ``name`` against its known hash; return the hash.

    The file is re-hashed only when its size or modification time differ from the
    sidecar written at download; a mismatch raises :class:`ChecksumError`.
    """
    entry = _entry(name)
    path = checkpoint_path(name)
    side = _sidecar(path)
    st = path.stat()
    recorded: dict[str, Any] = {}
    if side.is_file():
        try:
            recorded = json.loads(side.read_text())
        except (OSError, ValueError):
            recorded = {}
    expected = entry.sha256 or recorded.get("sha256")
    if (
        recorded.get("sha256")
        and recorded.get("size") == st.st_size
        and recorded.get("mtime_ns") == st.st_mtime_ns
        and (entry.sha256 is None or recorded["sha256"] == entry.sha256)
    ):
        return str(recorded["sha256"])
    actual = file_sha256(path)
    if expected is not None and actual != expected:
        raise ChecksumError(
            f"checkpoint {path} of model {name!r} has SHA-256 {actual}, expected {expected}; "
            "the file is damaged or not the right one: delete it and download it again"
        )
    if not entry.package_file:
        record_sha256(path, actual)
    return actual


def download_model(name: str, progress: Callable[[int, int | None], None] | None = None) -> Path:
    """Download registered model ``name`` into the cache (no network if already there)."""
    from samlib.download import download_file

    entry = _entry(name)
    path = checkpoint_path(name)
    if entry.package_file:
        return path
    if path.is_file():
        verify_cached(name)
        return path
    if entry.url is None:
        raise ModelNotDownloadedError(f"model {name!r} has no download address")
    sha = download_file(entry.url, path, sha256=entry.sha256, size=entry.size, progress=progress)
    record_sha256(path, sha)
    return path


# -- reading and loading ----------------------------------------------------------------
def suggested_params(model_or_name: Any) -> dict[str, float]:
    """Segment-everything parameters suggested for a model (empty: SAM's defaults).

    Accepts a registry name or a model returned by :func:`load_model`.
    """
    name = model_or_name
    if not isinstance(name, str):
        info = getattr(model_or_name, "samlib_info", None)
        name = info.name if info is not None else ""
    entry = REGISTRY.get(name)
    return dict(entry.suggested_params or {}) if entry is not None else {}


def _entry(name: str) -> ModelEntry:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; known models: {', '.join(sorted(REGISTRY))}"
        ) from None


def load_model(
    name_or_path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    *,
    allow_pickle: bool = False,
) -> Sam:
    """Load a SAM model from a registry name or a checkpoint path.

    Parameters
    ----------
    name_or_path : str or path
        A key of :data:`REGISTRY` (its checkpoint must be in the cache; see
        :func:`download_model`) or the path of a checkpoint file.
    device : str or torch.device, optional
        Where to put the model; default :func:`pick_device`. Weights are read on the CPU
        first.
    allow_pickle : bool
        Allow checkpoints that need full unpickling. Only for files you trust.

    Returns
    -------
    Sam
        In eval mode, with attribute ``samlib_info`` (:class:`ModelInfo`).
    """
    key = os.fspath(name_or_path)
    if key in REGISTRY:
        path = checkpoint_path(key)
        if not path.is_file():
            raise ModelNotDownloadedError(
                f"model {key!r} is not downloaded; run `python -m samlib download {key}` "
                f"or copy {REGISTRY[key].filename} (from {REGISTRY[key].url}) into "
                f"{path.parent}"
            )
        sha = verify_cached(key)
        name = key
        mask_threshold = REGISTRY[key].mask_threshold
    else:
        path = Path(key).expanduser()
        if not path.is_file():
            raise UnknownModelError(
                f"{key!r} is neither a known model ({', '.join(sorted(REGISTRY))}) nor an "
                "existing checkpoint file"
            )
        sha = file_sha256(path)
        name = path.stem
        mask_threshold = None  # unless the file records one (read below)
    state, config, meta = read_checkpoint(path, allow_pickle=allow_pickle)
    if mask_threshold is None and isinstance(meta.get("mask_threshold"), (int, float)):
        mask_threshold = float(meta["mask_threshold"])
    model = model_from_state(state, config, str(path))
    model = model.to(torch.device(device) if device is not None else pick_device())
    model.samlib_info = ModelInfo(name=name, sha256=sha, config=config, path=str(path))
    if mask_threshold is not None and mask_threshold != model.mask_threshold:
        model.mask_threshold = mask_threshold
    return model


# -- the bundled small demo model --------------------------------------------------------
# Trained from scratch, in four stages, on synthetic images by
# scripts/train_small_prompts.py (see samlib/weights/small_cnn.json for data, parameters
# and metrics). Registered here so that something runs offline; default_model_name()
# picks it only when no official checkpoint is cached.
def _register_bundled() -> None:
    from samlib.small_encoder import SMALL_CNN

    register_model(
        ModelEntry(
            name="small_cnn",
            config=SMALL_CNN,
            url=None,
            size=_SMALL_CNN_SIZE,
            sha256=_SMALL_CNN_SHA256,
            description=(
                "Small demo model, not SAM: a 1.2M-parameter SAM-architecture model with a "
                "CNN encoder, trained on synthetic images; for trying the app offline only"
            ),
            file_format="samlib",
            filename="weights/small_cnn.pt",
            package_file=True,
            suggested_params=_SMALL_CNN_PARAMS,
            mask_threshold=_SMALL_CNN_MASK_THRESHOLD,
        ),
        replace=True,
    )


# Chosen by scripts/calibrate_thresholds.py on synthetic validation images: the mask
# threshold by point and box prompts, then the segment-everything thresholds with it.
_SMALL_CNN_MASK_THRESHOLD = -2.0
_SMALL_CNN_PARAMS: dict[str, float] | None = {
    "pred_iou_thresh": 0.6,
    "stability_score_thresh": 0.9,
    "box_nms_thresh": 0.5,
    "min_mask_region_area": 256,
}
_SMALL_CNN_SIZE: int | None = 4955851
_SMALL_CNN_SHA256: str | None = "ea8f2d6063f64e88bc46190e1be40aadda8d9261af4606eda0632166d613e82a"
_register_bundled()
