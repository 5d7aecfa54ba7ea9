"""System check (workshop chapter 2): versions, device, memory, checkpoints, self-test.

A shared server's visitors see the checkpoints by name, size and whether they are cached,
never the folders they live in (``samlib check`` shows those to the server's owner), and
which switches the owner turned on.
"""

import pandas as pd
import streamlit as st

from samlib.app import selftest
from samlib.app.server import model_label
from ui import model_ui, state

st.title("System check")
st.caption("Workshop chapter 2: is everything SAM needs installed, and where are the models?")

report = selftest.environment_report()
left, right = st.columns(2, gap="large")
with left:
    st.subheader("Software")
    versions = {"python": report["python"], **report["packages"]}
    st.dataframe(
        pd.DataFrame({"package": list(versions), "version": list(versions.values())}),
        hide_index=True,
        width="stretch",
    )
with right:
    st.subheader("Hardware")
    st.metric("Device used for SAM", report["device"])
    if report["cuda_device"]:
        free, total = report["gpu_memory_gb"]
        st.metric(report["cuda_device"], f"{free:.1f} of {total:.1f} GB free")
    if report["ram_gb"] is not None:
        st.metric("Memory (RAM)", f"{report['ram_gb']:.1f} GB")
    st.caption(f"{report['cpu_threads']} CPU threads for PyTorch; {report['platform']}")

st.subheader("Checkpoints")
st.markdown(
    "Downloaded checkpoints live in the `checkpoints` folder of samlib's cache on the server "
    "(`samlib check` prints where; `SAMLIB_CACHE_DIR` moves it). To install one offline, copy "
    "the file there under the name shown in *file*."
)
st.dataframe(pd.DataFrame(selftest.checkpoint_table(paths=False)), hide_index=True, width="stretch")
cache = state.embedding_cache()
st.caption(
    f"This session uses: **{model_label(state.model_name())}**. Image embeddings are cached in "
    f"memory ({len(cache)} now) and on the server's disk, so reopening an image never "
    "re-encodes it."
)

st.subheader("Server settings")
st.markdown(
    "What visitors of this server may do, as set by the person who started it (with these "
    "environment variables)."
)
st.dataframe(pd.DataFrame(model_ui.server_policy().settings()), hide_index=True, width="stretch")

st.subheader("Self-test")
st.markdown(
    "Runs the whole pipeline (embedding, point prompt, segment everything, export) on a "
    "tiny model with **random weights** and a synthetic image: it checks the machinery "
    "in seconds, without downloading anything. Its masks are meaningless by design."
)
if st.button("Run self-test", icon=":material/play_arrow:", key="run_selftest"):
    bar = st.progress(0.0, text="Starting...")
    steps = selftest.self_test(lambda i, n, name: bar.progress(i / n, text=name))
    st.session_state["selftest"] = [vars(s) for s in steps]
if "selftest" in st.session_state:
    steps = st.session_state["selftest"]
    if all(s["ok"] for s in steps):
        st.success(f"All {len(steps)} stages passed.", icon=":material/check_circle:")
    else:
        st.error("Some stages failed; see the details below.", icon=":material/error:")
    st.dataframe(pd.DataFrame(steps), hide_index=True, width="stretch")
