# Two entry points matter: `make demo` and `make test` (both bootstrap themselves).
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
export PATH := $(HOME)/.local/bin:$(PATH)
RUN := uv run --frozen --no-sync
DATA_DIR ?= $(CURDIR)/data
export DAGSTER_HOME ?= $(DATA_DIR)/dagster_home

.PHONY: setup demo test test-unit lint ui bench clean

setup:
	@scripts/bootstrap.sh

demo: setup  ## simulate 14 days and materialize every asset on the local defaults
	$(RUN) geo-busyness demo $(ARGS)

test: setup  ## unit, then integration, then e2e tests (what CI runs)
	$(RUN) ruff check geo_busyness geo_busyness_tests
	$(RUN) pytest

test-unit: setup
	$(RUN) pytest -m unit

lint: setup
	$(RUN) ruff check geo_busyness geo_busyness_tests
	$(RUN) ruff format --check geo_busyness geo_busyness_tests

ui: setup  ## Dagster webserver + daemon on http://127.0.0.1:3000 over the demo's instance
	@mkdir -p "$(DAGSTER_HOME)"
	$(RUN) dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

bench: setup  ## data-path benchmark; figures go to BENCHMARKS.md
	$(RUN) python scripts/bench.py $(ARGS)

clean:
	rm -rf data bench-data
