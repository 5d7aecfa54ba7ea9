"""Streamlit helpers shared by the pages: session state, widgets (``*_ui`` functions), views.

Only the app imports this package; the computations live in ``samlib``.
"""
