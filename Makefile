# Two commands for a fresh machine: `make eval` (install + main job), `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned to the CPU build: left to the resolver, torch pulls several GB of
# CUDA wheels. Elsewhere, point pip at the CPU wheels, e.g.
#   make eval TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_VERSION ?= 2.13.0
TORCH_PIP_ARGS ?=

.PHONY: install eval results test test-unit lint bench clean pg-up pg-down

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION) $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# The main job: the router against single models and baselines, on both recordings.
# Results, tables and plots land in results/<dataset>/.
eval: install
	$(BIN)/emafusion data check --dataset mmlu-pro
	$(BIN)/emafusion data check --dataset routerbench
	$(BIN)/emafusion eval --dataset routerbench
	$(BIN)/emafusion eval --dataset mmlu-pro

# Regenerate the committed results (docs/results/) from a fresh evaluation.
results: eval
	for d in mmlu-pro routerbench; do \
	  mkdir -p docs/results/$$d && cp results/$$d/results.json results/$$d/results.md \
	    results/$$d/tradeoff.png docs/results/$$d/; \
	done

# Unit tests and integration tests (the recordings; marked slow).
test: install
	$(BIN)/python -m pytest -q

# Unit tests only: seconds, no recordings, no MiniLM.
test-unit: install
	$(BIN)/python -m pytest -q tests/unit -m "not slow"

# A throwaway PostgreSQL for the shared-store tests and bench/store.py (see .ci/pg.sh);
# `make test` finds it through .pg/url. `eval "$$(make -s pg-up)"` also exports its URL.
pg-up:
	@bash .ci/pg.sh start

pg-down:
	@bash .ci/pg.sh stop

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy graph nodes stores cli evals train serve

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
