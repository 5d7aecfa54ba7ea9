"""The Batch page without Streamlit: the current recipe over several images, in this process.

The page hands over uploaded files (name and bytes) and bundled samples; they are written
to a temporary folder of this run alone, :func:`samlib.batch.run_batch` segments them with
the app's own model, and everything it wrote comes back as one zip, with the summary and
the per-object table. Nothing stays on the server's disk after the run.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import tifffile
import torch

from samlib.batch import BatchReport, ImageResult, ModelSpec, run_batch, use_model
from samlib.datasets.samples import load_sample
from samlib.errors import ParameterError
from samlib.everything.params import GeneratorParams
from samlib.image.display import DisplaySettings
from samlib.image.microscopy import MicroscopyImage
from samlib.models.loading import suggested_params
from samlib.recipe import EverythingSettings, LiveFilters, ModelRef, Recipe

#: The most images one batch of the page takes (larger runs belong to ``samlib batch``).
MAX_IMAGES = 50


@dataclass(frozen=True)
class BatchOutcome:
    """What the page shows and offers after a run."""

    report: BatchReport
    summary: pd.DataFrame
    objects: pd.DataFrame
    zip_bytes: bytes
    inputs: dict[str, bytes]  # file name -> content, to open one image in the app

    @property
    def counts(self) -> dict[str, int]:
        n = len(self.report.results)
        return {"images": n, "done": n - self.report.n_failed, "failed": self.report.n_failed}


def default_recipe(model, image: DisplaySettings | None = None) -> Recipe:
    """A segment-everything recipe from the generator's defaults and the model's
    suggested values, for when the Segment everything page has not run yet."""
    gen = GeneratorParams(**suggested_params(model))
    return Recipe(
        kind="everything",
        model=ModelRef.of(model),
        image=image or DisplaySettings(),
        everything=EverythingSettings(gen),
        filters=LiveFilters.from_generator(gen),
    )


def image_file(image: MicroscopyImage) -> tuple[str, bytes]:
    """A 2-D image (a sample, the page's current image) as a TIFF file ``(name, bytes)``."""
    if image.n_planes != 1:
        raise ParameterError(f"{image.name} is a stack; batch runs take 2-D images")
    data = image.plane(0)
    buf = io.BytesIO()
    if data.shape[-1] == 1:
        tifffile.imwrite(buf, data[..., 0], metadata={"axes": "YX"})
    else:
        tifffile.imwrite(buf, data, metadata={"axes": "YXC"})
    return Path(image.name).stem + ".tif", buf.getvalue()


def sample_file(name: str) -> tuple[str, bytes]:
    """A bundled 2-D sample as a TIFF file ``(file name, bytes)``."""
    return image_file(load_sample(name)[0])


def run_files(
    files: Sequence[tuple[str, bytes]],
    recipe: Recipe,
    model,
    *,
    progress: Callable[[int, int, ImageResult], None] | None = None,
) -> BatchOutcome:
    """Segment ``files`` (name, content) with ``recipe`` and the already loaded ``model``."""
    if not files:
        raise ParameterError("choose at least one image for the batch")
    if len(files) > MAX_IMAGES:
        raise ParameterError(
            f"{len(files)} images: the page takes at most {MAX_IMAGES}; use `samlib batch`"
        )
    info = getattr(model, "samlib_info", None)
    spec = ModelSpec(getattr(info, "path", None) or getattr(info, "name", "model"))
    use_model(spec, model)
    inputs: dict[str, bytes] = {}
    for name, content in files:
        safe = Path(name).name or "image"  # never a path of the server's
        stem, suffix = Path(safe).stem, Path(safe).suffix
        k = 1
        while safe in inputs:
            k += 1
            safe = f"{stem}_{k}{suffix}"
        inputs[safe] = content
    with tempfile.TemporaryDirectory(prefix="samlib-batch-") as tmp:
        folder, out = Path(tmp) / "images", Path(tmp) / "results"
        folder.mkdir()
        for name, content in inputs.items():
            (folder / name).write_bytes(content)
        report = run_batch(
            sorted(folder.iterdir()),
            recipe,
            out,
            model=spec,
            threads_per_worker=torch.get_num_threads(),  # leave other sessions' setting be
            progress=progress,
        )
        summary = pd.read_csv(out / "summary.csv")
        objects = pd.read_parquet(out / "objects.parquet")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(out.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(out).as_posix())
    summary["path"] = summary["path"].map(lambda p: Path(p).name)  # no server paths shown
    return BatchOutcome(report, summary, objects, buf.getvalue(), inputs)
