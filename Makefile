# One entry point for a fresh machine: `make quickstart` runs the main job, `make test` runs the tests.
# Both create .venv and install the CPU build of torch first, then this project with its test extras; `make test`
# also unpacks transformers' common test mixins from the sdist of the installed release (tests/transformers_common.py).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test quickstart

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) tests/transformers_common.py
	$(PY) -m pytest

quickstart: $(VENV)/.installed
	$(PY) -m training.quickstart
