"""Examples & about (workshop chapters 1 and 5): the samples, what SAM does well and badly."""

import streamlit as st

from samlib.datasets import samples
from ui import image_ui

st.title("Examples & about")

st.subheader("What SAM is")
st.markdown(
    """
**Segment Anything (SAM)** (Kirillov et al., Meta AI, 2023) is a *promptable* segmentation
model trained on 1 billion masks from 11 million natural images. It has three parts:

- an **image encoder** (a Vision Transformer, ViT-B / L / H) that turns the image into an
  *embedding*: the slow step, done **once per image** (this app caches it);
- a **prompt encoder** for points (foreground / background), boxes and low-resolution masks;
- a light **mask decoder** that combines both and returns up to three candidate masks with a
  *predicted IoU* (its own estimate of quality), in milliseconds.

*Segment everything* prompts the decoder with a regular grid of points and keeps the masks
that pass quality filters (predicted IoU, stability) and non-maximum suppression.
SAM was not trained on microscopy: it finds objects with clear edges well, but may merge
touching cells, miss faint ones, or return the whole image as one "object". Fine-tuned
models (e.g. micro-sam's `vit_b_lm`) do better on cells and nuclei.
"""
)

NOTES = {
    "dsb2018": "Well separated, bright nuclei on a dark background: SAM's best case. Touching "
    "nuclei are sometimes merged; the whole image often comes back as one mask (filter it "
    "out on the Segment everything page). Compare with the reference segmentation.",
    "cell": "A phase-contrast-like cell with faint, textured edges: a single point often gives "
    "a partial mask; add a box, or background points, and compare the three candidates.",
    "immuno": "Stained tissue (brightfield, RGB): many small, low-contrast, "
    "crowded structures. Segment everything returns many overlapping masks; lower the box "
    "NMS threshold and use the area filter.",
    "synthetic": "Two channels (nuclei and membranes) in 16 bits: try the channel mapping and "
    "percentiles on the first page and see how the masks change with what SAM sees.",
}


def _notes_for(name: str) -> str:
    for key, text in NOTES.items():
        if key in name.lower():
            return text
    return ""


st.subheader("Bundled examples")
for name in samples.list_samples():
    src = image_ui._sample(name)
    thumb, text = st.columns([1, 3], gap="medium")
    with thumb:
        st.image(image_ui.sample_thumbnail(name), width="stretch")
    with text:
        st.markdown(f"**{name}**: {src.description}")
        st.caption(src.image.describe())
        st.markdown(_notes_for(name))

st.subheader("Learn more")
st.markdown(
    """
- Kirillov et al. 2023, *Segment Anything*: <https://arxiv.org/abs/2304.02643>,
  code and checkpoints: <https://github.com/facebookresearch/segment-anything>
- Archit et al. 2023, *Segment Anything for Microscopy* (micro-sam):
  <https://github.com/computational-cell-analytics/micro-sam>
- Caicedo et al. 2019, *Nucleus segmentation across imaging experiments: the 2018 Data
  Science Bowl*, Nature Methods 16 (the DSB2018 nuclei sample, BBBC038)
- The workshop this app follows: *Segment Anything with Python for Microscopy Images*,
  Harvard Medical School Image Analysis Collaboratory, 2024.
"""
)
