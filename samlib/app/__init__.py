"""The UI-free models of the Streamlit pages.

A user's image and settings, runs, prompted objects, results and their recipes; what a
shared server lets its visitors do.

May import: every subpackage but cli, and samlib.recipe. Never streamlit.
"""

from __future__ import annotations

from samlib.app.canvas import (
    BACKGROUND_COLOR,
    BOX_COLOR,
    FOREGROUND_COLOR,
    merge_prompts,
    prompts_from_canvas,
    typed_box,
)
from samlib.app.everything_run import (
    EverythingRun,
    area_filter,
    refilter_run,
    run_everything,
)
from samlib.app.results import (
    download_makers,
    everything_recipe,
    params_json,
    prompts_recipe,
    record_rows,
)
from samlib.app.selftest import checkpoint_table, environment_report, self_test
from samlib.app.server import (
    ServerPolicy,
    SessionUploads,
    model_label,
    prune_idle_uploads,
    without_folder,
)
from samlib.app.session import (
    MAX_UPLOADS,
    RecentUploads,
    WorkImage,
    estimate_encode_seconds,
    prepare_image,
    reference_labels,
)

__all__ = [
    "BACKGROUND_COLOR",
    "BOX_COLOR",
    "FOREGROUND_COLOR",
    "merge_prompts",
    "prompts_from_canvas",
    "typed_box",
    "EverythingRun",
    "area_filter",
    "refilter_run",
    "run_everything",
    "download_makers",
    "everything_recipe",
    "params_json",
    "prompts_recipe",
    "record_rows",
    "checkpoint_table",
    "environment_report",
    "self_test",
    "ServerPolicy",
    "SessionUploads",
    "model_label",
    "prune_idle_uploads",
    "without_folder",
    "MAX_UPLOADS",
    "RecentUploads",
    "WorkImage",
    "estimate_encode_seconds",
    "prepare_image",
    "reference_labels",
]
