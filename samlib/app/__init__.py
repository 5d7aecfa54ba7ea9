"""The UI-free models of the Streamlit pages.

A user's image and settings, runs, prompted objects, results.

May import: every subpackage but cli. Never streamlit.
"""

from __future__ import annotations

from samlib.app.canvas import (
    BACKGROUND_COLOR,
    BOX_COLOR,
    FOREGROUND_COLOR,
    merge_prompts,
    prompts_from_canvas,
)
from samlib.app.everything_run import (
    EverythingRun,
    FilteredRun,
    area_filter,
    refilter_run,
    run_everything,
)
from samlib.app.results import (
    EXPORTS,
    export_makers,
    provenance,
    record_rows,
)
from samlib.app.selftest import checkpoint_table, environment_report, self_test
from samlib.app.session import (
    MAX_PROJECTION,
    DisplaySettings,
    WorkImage,
    estimate_encode_seconds,
    prepare_image,
)

__all__ = [
    "BACKGROUND_COLOR",
    "BOX_COLOR",
    "FOREGROUND_COLOR",
    "merge_prompts",
    "prompts_from_canvas",
    "EverythingRun",
    "FilteredRun",
    "area_filter",
    "refilter_run",
    "run_everything",
    "EXPORTS",
    "export_makers",
    "provenance",
    "record_rows",
    "checkpoint_table",
    "environment_report",
    "self_test",
    "DisplaySettings",
    "MAX_PROJECTION",
    "WorkImage",
    "estimate_encode_seconds",
    "prepare_image",
]
