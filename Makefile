# `make run` starts the app, `make test` runs the tests; both create .venv/ on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench

# samlib itself goes in editable (its dependencies come from the requirements files), so
# scripts, benchmarks and tests import it as an installed package.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade -r requirements-dev.txt
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m streamlit run app.py

lint: $(STAMP)
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/bench.py
