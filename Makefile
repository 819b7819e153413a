# The README's two commands: `make run` (main job) and `make test` (whole suite).
# Both set up everything first: uv (bootstrapped with pip if missing), Python 3.10, .venv from uv.lock.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
DATA ?= data/brazil-tailings
# Where `fetch-data` gets the study's pairs when $(DATA) is empty: a local mirror beside the
# clone if there is one, else the study's public repository.
FETCH_SOURCE ?= $(wildcard ../shared/brazil-tailings)
OUTPUT ?= outputs
WORKERS ?= 2
PYTEST_ARGS ?=
# pytest-xdist processes for `make test` (0: one process), one per core of the CI machine; each
# builds its own session fixtures (the shared tiny pipeline run among them). docs/development.md
# has the suite's times with one and two.
TEST_WORKERS ?= 2

export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

UV := $(or $(shell command -v uv 2>/dev/null),.tools/bin/uv)
# TFX 1.16 needs Python 3.10: take the first interpreter that really is 3.10 (pyenv shims may lie).
PYTHON310 := $(or $(shell for c in python3.10 $$HOME/.pyenv/versions/3.10*/bin/python3.10 \
	/usr/local/bin/python3.10 /usr/bin/python3.10; do \
	"$$c" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null \
	&& { command -v "$$c" 2>/dev/null || echo "$$c"; } && break; done),3.10)

.PHONY: setup run test lint clean

setup: $(VENV)/.synced

.tools/bin/uv:
	python3 -m venv .tools && .tools/bin/pip install --quiet uv

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) venv --seed --allow-existing --python "$(PYTHON310)" $(VENV)
	$(UV) sync --frozen --python $(BIN)/python
	@touch $@

run: setup
	@if ! ls $(DATA)/img/*.tif >/dev/null 2>&1; then \
		$(BIN)/tailings fetch-data --dest $(DATA) $(if $(FETCH_SOURCE),--source $(FETCH_SOURCE)); \
	fi
	$(BIN)/tailings run --data $(DATA) --output-dir $(OUTPUT) --workers $(WORKERS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

clean:
	rm -rf $(OUTPUT) .pytest_cache .ruff_cache
