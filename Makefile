# One entry point for a fresh machine: `make quickstart` runs the main job, `make test` runs the tests.
# Both create .venv and install the CPU build of torch first, then this project with its test extras; `make test`
# also checks the style (`make lint`: ruff) and unpacks transformers' common test mixins from the sdist of the
# installed release (tests/transformers_common.py).
# `make demo` starts the web demo on the quickstart's tiny model (trained first when absent).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test lint quickstart demo browser

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed browser lint
	$(PY) tests/transformers_common.py
	$(PY) -m pytest

# Style as pyproject.toml configures it; `$(VENV)/bin/ruff format .` fixes the formatting.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The demo's browser test needs Debian's chromium and chromium-driver: installed here when missing and we are root
# (as in CI); otherwise that test skips and says why.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
		|| echo "make: could not install chromium chromium-driver; the browser test will skip"; \
	else echo "make: chromium/chromedriver absent and not root; the browser test will skip"; fi

quickstart: $(VENV)/.installed
	$(PY) -m training.quickstart

outputs/quickstart/catseg/model/config.json: | $(VENV)/.installed
	$(PY) -m training.quickstart

demo: $(VENV)/.installed outputs/quickstart/catseg/model/config.json
	$(VENV)/bin/ovseg-demo
