"""Environment report and a one-click self-test of the whole pipeline (workshop chapter 2).

The self-test runs every stage (model build, embedding, point prompt, segment everything,
label-image export and read-back) on a tiny random-weight SAM and a synthetic image, so it
needs no download and finishes in seconds on a laptop CPU. Random weights give meaningless
masks: the test checks that the machinery works, not segmentation quality.
"""

from __future__ import annotations

import io
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np
import tifffile
import torch
from skimage.draw import disk

from samlib.everything.generate import segment_everything
from samlib.models.arch import VIT_TINY, build_sam
from samlib.models.embeddings import compute_embedding
from samlib.models.loading import REGISTRY, model_status, pick_device
from samlib.outputs.export import label_image, label_tiff_bytes
from samlib.prompts.prompting import predict

#: Packages whose versions the report lists (distribution names).
PACKAGES = (
    "torch",
    "torchvision",
    "segment-anything",
    "streamlit",
    "numpy",
    "scikit-image",
    "tifffile",
    "opencv-python-headless",
    "pycocotools",
    "streamlit-drawable-canvas",
)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _total_ram_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def environment_report() -> dict[str, Any]:
    """Versions, device and memory of this machine, as plain values for a table.

    Returns
    -------
    dict
        ``python``, ``platform``, ``packages`` (name -> version), ``device``,
        ``cuda_device`` (name or None), ``gpu_memory_gb`` (free, total) or None,
        ``ram_gb`` (total) or None, ``cpu_threads``.
    """

    device = pick_device()
    gpu_name, gpu_mem = None, None
    if device.type == "cuda":
        gpu_name = torch.cuda.get_device_name(device)
        free, total = torch.cuda.mem_get_info(device)
        gpu_mem = (round(free / 1e9, 2), round(total / 1e9, 2))
    ram = _total_ram_bytes()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "device": str(device),
        "cuda_device": gpu_name,
        "gpu_memory_gb": gpu_mem,
        "ram_gb": None if ram is None else round(ram / 1e9, 1),
        "cpu_threads": torch.get_num_threads(),
    }


def checkpoint_table(paths: bool = True) -> list[dict[str, Any]]:
    """One row per registered model: name, cached?, size in MB, file name, path, description.

    ``paths=False`` leaves out the ``path`` column (the folder on this machine), for tables
    shown to a shared server's visitors; the ``file`` name is what an offline install needs.
    """

    rows = []
    for name, entry in REGISTRY.items():
        st = model_status(name)
        size = st.size if st.cached else entry.size
        row = {
            "model": name,
            "cached": st.cached,
            "size_mb": None if size is None else round(size / 1e6, 1),
            "file": st.path.name,
            "path": str(st.path),
            "description": entry.description,
        }
        if not paths:
            del row["path"]
        rows.append(row)
    return rows


@dataclass
class Step:
    """One self-test stage: its name, whether it passed, seconds taken, and a detail line."""

    name: str
    ok: bool
    seconds: float
    detail: str


def _disks_image(size: int = 160) -> np.ndarray:
    """A grey HWC uint8 image with three bright disks on a dark background."""

    img = np.full((size, size), 20, dtype=np.uint8)
    for r, c, rad in ((40, 50, 18), (100, 110, 26), (120, 40, 12)):
        rr, cc = disk((r, c), rad, shape=img.shape)
        img[rr, cc] = 220
    return np.repeat(img[..., None], 3, axis=2)


def self_test(progress: Callable[[int, int, str], None] | None = None) -> list[Step]:
    """Run the pipeline on a tiny random-weight SAM; return one :class:`Step` per stage.

    Parameters
    ----------
    progress : callable, optional
        Called as ``progress(done, total, stage_name)`` before each stage.

    A failing stage is reported (``ok=False`` with the error) and the later stages that
    depend on it are skipped.
    """

    state: dict[str, Any] = {"rgb": _disks_image()}

    def build() -> str:
        torch.manual_seed(0)
        state["model"] = build_sam(VIT_TINY)
        n = sum(p.numel() for p in state["model"].parameters())
        return f"tiny ViT-SAM with {n:,} random weights"

    def embed() -> str:
        state["emb"] = compute_embedding(state["model"], state["rgb"])
        return f"features {tuple(state['emb'].features.shape)}"

    def prompt() -> str:
        res = predict(
            state["model"],
            state["emb"],
            points=np.array([[50.0, 40.0]]),
            labels=np.array([1]),
            multimask=True,
        )
        masks = np.asarray(res.masks)
        return f"{masks.shape[0]} candidate masks of {masks.shape[1]}x{masks.shape[2]} px"

    def everything() -> str:
        state["records"] = segment_everything(
            state["model"],
            state["rgb"],
            embedding=state["emb"],
            points_per_side=8,
            pred_iou_thresh=0.0,
            stability_score_thresh=0.0,
        )
        return f"{len(state['records'])} masks from an 8x8 point grid"

    def export() -> str:
        labels = label_image(state["records"], state["rgb"].shape[:2])
        back = tifffile.imread(io.BytesIO(label_tiff_bytes(labels)))
        if not np.array_equal(back, labels):
            raise AssertionError("label TIFF read back differs from the label image")
        return f"label TIFF round-trip ok ({int(labels.max())} labels)"

    stages = [
        ("Build a tiny model", build),
        ("Image embedding", embed),
        ("Point prompt", prompt),
        ("Segment everything", everything),
        ("Export label image", export),
    ]
    steps: list[Step] = []
    for i, (name, fn) in enumerate(stages):
        if progress is not None:
            progress(i, len(stages), name)
        if steps and not steps[-1].ok:
            steps.append(Step(name, False, 0.0, "skipped (an earlier stage failed)"))
            continue
        t0 = time.perf_counter()
        try:
            detail = fn()
            ok = True
        except Exception as exc:  # report every failure: this is a diagnostic
            detail, ok = f"{type(exc).__name__}: {exc}", False
        steps.append(Step(name, ok, round(time.perf_counter() - t0, 3), detail))
    if progress is not None:
        progress(len(stages), len(stages), "done")
    return steps
