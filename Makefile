# transformer-spectra: `make help` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN_NAME ?= default
MODEL ?= smollm2
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.py))
PYTEST_ARGS ?=
SWEEP ?= sweeps/smollm2-vs-init.yaml

$(VENV)/.stamp: pyproject.toml scripts/setup_env.sh
	PYTHON=$(PYTHON) bash scripts/setup_env.sh

$(VENV)/.stamp-lab: $(VENV)/.stamp lab/overrides.json
	@echo "[lab] first start: installing JupyterLab (the 'lab' extra of pyproject.toml; jupytext, ipywidgets and"
	@echo "[lab] ipympl come with the base install) into $(VENV), and Lab's settings (lab/overrides.json: .py files"
	@echo "[lab] open as notebooks). This takes a few minutes, once; later starts skip it."
	EXTRAS=test,lab PYTHON=$(PYTHON) bash scripts/setup_env.sh
	mkdir -p $(VENV)/share/jupyter/lab/settings
	cp lab/overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	touch $@

$(VENV)/.stamp-bench: $(VENV)/.stamp
	EXTRAS=test,bench PYTHON=$(PYTHON) bash scripts/setup_env.sh || \
	  echo "[bench] the bench extra (WeightWatcher) did not install: bench_rmt.py skips its baseline"
	touch $@

.PHONY: help venv run sweep index test lint format bench fixtures families sync lab clean clean-output distclean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-13s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: MODEL=$(MODEL) RUN_NAME=$(RUN_NAME) SWEEP=$(SWEEP) PYTHON=$(PYTHON)"

venv: $(VENV)/.stamp ## Create or refresh the virtual environment (.venv) with a CPU or CUDA torch as fits
	@true

run: $(VENV)/.stamp ## Main job: every notebook on MODEL (default: bundled SmolLM2-135M) into output/, then SWEEP
	@set -e; for nb in $(NOTEBOOKS); do \
	  echo "==> $$nb"; \
	  $(PY) -m utils.run_notebook $$nb --run-name $(RUN_NAME) --model "$(MODEL)"; \
	done; echo "reports: output/*/$(RUN_NAME)/report.html"
	$(if $(SWEEP),$(PY) -m utils.sweep $(SWEEP),@echo "SWEEP empty: no sweep")

sweep: $(VENV)/.stamp ## Run the sweep file SWEEP on an embedded Dask cluster (default: the example sweep)
	$(PY) -m utils.sweep $(SWEEP)

index: $(VENV)/.stamp ## Rewrite output/index.html, the list of every run with links to its report
	$(PY) -m utils.sweep --index

lint: $(VENV)/.stamp ## Lint and format check (ruff) of utils, notebooks, tests and bench
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.stamp ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint ## Lint, then the test suite (unit tests, notebook smoke tests on tiny models, bundled-model checks)
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

bench: $(VENV)/.stamp-bench ## Print the benchmark figures with their baselines and ratios
	@set -e; for b in $(sort $(wildcard bench/bench_*.py)); do echo "==> $$b"; $(PY) $$b; done

fixtures: $(VENV)/.stamp ## Write once the 8B and 3B random-weight checkpoints for bench_scale (~22 GB, ~/.cache; TSPECTRA_FIXTURES)
	$(PY) -m utils.weights.fixtures

families: $(VENV)/.stamp ## Conformance tests of every family, the README's family table from them, notebooks 01 and 02 on each family
	rm -f docs/conformance.jsonl
	TSPECTRA_CONFORMANCE=docs/conformance.jsonl $(PY) -m pytest -q -n 2 tests/test_families.py -k "not readme"
	$(PY) -m utils.weights.family_table docs/conformance.jsonl docs/conformance.json README.md
	rm -f docs/conformance.jsonl
	TSPECTRA_ALL_FAMILIES=1 $(PY) -m pytest -q -n 2 tests/test_family_analyses.py -k every_family

sync: $(VENV)/.stamp ## Generate / update the paired .ipynb next to each notebooks/*.py (jupytext)
	$(PY) -m utils.running.lab $(NOTEBOOKS)

lab: $(VENV)/.stamp-lab ## JupyterLab with the repository as its root (opens in notebooks/; .py files open as notebooks)
	$(MAKE) sync
	@echo "[lab] starting JupyterLab; a Run All with run_name \"default\" writes to output/<notebook>/lab/"
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/notebooks \
	  --config=lab/jupyter_server_config.json \
	  $(if $(filter 0,$(shell id -u)),--allow-root,)

clean: ## Remove generated notebooks and caches (keeps output/ and .venv)
	rm -f notebooks/*.ipynb
	rm -rf .pytest_cache .ruff_cache notebooks/.ipynb_checkpoints
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

clean-output: ## Remove every run result under output/
	find output -mindepth 1 -not -name .gitkeep -delete

distclean: clean clean-output ## Also remove the virtual environment
	rm -rf $(VENV)
