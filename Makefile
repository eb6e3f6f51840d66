# clbench: set up with `make install`, test with `make test`, benchmark with `make bench METHOD=x`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
METHOD ?= naive
SEEDS ?= 0 1 2
TRACK ?=
ARGS ?=
WORKERS ?= 1

# Debian packages for the PostgreSQL sweep test and the leaderboard browser test, both in
# `make test-integration` (needs root; without them those tests skip locally and fail under CI=true).
SYSTEM_PACKAGES := postgresql chromium

.PHONY: system-deps install test test-integration compat gpu-check test-slow test-all bench compare board health tracks perf quality ui lock clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet pip==26.3
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

system-deps:
	@missing=""; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -z "$$missing" ]; then echo "system packages present: $(SYSTEM_PACKAGES)"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null && echo "installed:$$missing"; \
	else echo "missing Debian packages:$$missing (run: sudo apt-get install$$missing)"; fi

# `make test`: in-process tests; `make test-integration`: tests that spawn processes (torchrun,
# worker pools, a killed CLI run) or start servers (PostgreSQL, MLflow, Chromium). CI runs both.
test: install
	$(BIN)/python -m pytest -m "not slow and not integration" -q

test-integration: install
	$(BIN)/python -m pytest -m "integration and not slow" -q

# Method x data-parallel mode: run the 2-vs-1-process tests and write their figures into README.md
compat: install
	rm -f runs/compat.jsonl && mkdir -p runs
	CLBENCH_COMPAT_OUT=$(CURDIR)/runs/compat.jsonl $(BIN)/python -m pytest -m integration -q tests/test_distributed.py -k two_processes
	$(BIN)/python -m clbench.compat runs/compat.jsonl README.md

# On a CUDA machine: SmolLM2 with naive and three selective methods, bf16, a few hundred steps
gpu-check: install
	$(BIN)/python -m clbench.gpu_check --methods naive hft ssu migu --steps 300

test-slow: install
	$(BIN)/python -m pytest -m slow -q

test-all: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/clbench bench method=$(METHOD) $(if $(TRACK),--track $(TRACK),) --seeds $(SEEDS) $(if $(RESUME),--resume,) $(if $(QUICK),--quick,) --workers $(WORKERS) $(ARGS)

compare: install
	$(BIN)/clbench compare --track $(or $(TRACK),vision_cil) --seeds $(SEEDS) $(if $(RESUME),--resume,)

# A track's board from this clean commit: protocol for every applicable method -> submit -> validate -> render (resumable)
# ARGS: where data and weights are, location keys only, e.g. ARGS="scenario.root=/data model.weights=/w/vit.pth"
board: install
	$(BIN)/clbench board $(or $(TRACK),vision_cil) $(ARGS) --workers $(WORKERS)

# Track health check: the reference learners on the track's evaluation scenario -> leaderboards/<track>/health.json
# (ARGS as for board)
health: install
	$(BIN)/clbench track check $(or $(TRACK),vision_cil) $(ARGS)

tracks: install
	$(BIN)/clbench tracks

perf: install
	$(BIN)/python tests/perf/perf_throughput.py
	$(BIN)/python tests/perf/perf_methods.py
	$(BIN)/python tests/perf/perf_pet.py
	$(BIN)/python tests/perf/perf_uint8.py
	$(BIN)/python tests/perf/perf_lazy.py
	$(BIN)/python tests/perf/perf_lm.py

quality: install
	$(BIN)/ruff check clbench methods scenarios tests
	$(BIN)/mypy

ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --port 5000

# Regenerate the pinned lock file from the current environment (after changing dependencies).
lock:
	$(BIN)/pip freeze --exclude-editable | grep -v '^-e' > requirements.lock

clean:
	rm -rf runs mlruns mlartifacts mlflow.db .pytest_cache .mypy_cache .ruff_cache
