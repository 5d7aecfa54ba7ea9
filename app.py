"""Segment Anything for microscopy: the Streamlit app. Run with ``streamlit run app.py``.

The pages live in ``pages/``; all computation is in the ``samlib`` library. Set the
environment variable ``SAMLIB_MODEL`` to a registry name or a checkpoint path to choose
the default model (tests use it to inject a tiny random-weight model).
"""

import streamlit as st

st.set_page_config(page_title="SAM for microscopy", page_icon=":microscope:", layout="wide")

PAGES = [
    st.Page("pages/home.py", title="Image & model", icon=":material/image:", default=True),
    st.Page("pages/system_check.py", title="System check", icon=":material/health_and_safety:"),
    st.Page("pages/everything.py", title="Segment everything", icon=":material/grid_on:"),
    st.Page("pages/prompts.py", title="Prompts", icon=":material/touch_app:"),
    st.Page("pages/batch.py", title="Batch", icon=":material/stacks:"),
    st.Page("pages/about.py", title="Examples & about", icon=":material/school:"),
]

st.navigation(PAGES).run()
