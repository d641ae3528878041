# The README's commands. Everything the project needs is installed from here.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo dev bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/pytest -q $(PYTEST_ARGS)

# `recon-pipeline demo`, recorded in the instance `make dev` serves (.dagster_home).
demo: install
	$(BIN)/python -m recon_pipeline.local.dev demo

dev: install
	$(BIN)/python -m recon_pipeline.local.dev

bench: install
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check recon_pipeline recon_pipeline_tests benchmarks
	$(BIN)/mypy recon_pipeline benchmarks

clean:
	-$(BIN)/recon-pipeline embedded stop
	rm -rf $(VENV) .recon .dagster_home
