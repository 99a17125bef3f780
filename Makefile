# The README's commands. Each target creates or updates the virtualenv itself.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONUNBUFFERED := 1

.PHONY: install demo test test-fast lint bench bench-quality clean stack stack-down

install: $(STAMP)

# Re-install whenever the dependencies change; torch/torchvision come from the local disk.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: set PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(BIN)/python jobs/demo.py --config jobs/configs/demo.yaml --output demo_output

# Lint, then every tier: unit (seconds), integration (Ray, MLflow, S3), e2e (clusters, Serve, stack).
test: $(STAMP) lint
	$(BIN)/python -m pytest -q tests/unit tests/integration tests/e2e

# The unit tier: no Ray, no servers, no jobs in subprocesses; well under a minute.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/ruff check platform tests jobs benchmarks serve infra
	$(BIN)/ruff format --check platform tests jobs benchmarks serve infra

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_model.py
	$(BIN)/python benchmarks/bench_train_loop.py
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_zoo.py
	$(BIN)/python benchmarks/bench_score.py
	$(BIN)/python benchmarks/bench_serve.py
	$(MAKE) bench-quality

# Fine-tune on real pairs and evaluate on held-out ones, one set at a time (about 8
# minutes a set on 2 cores).
bench-quality: $(STAMP)
	$(BIN)/python benchmarks/bench_quality.py --output bench_quality/levir --sets levir
	$(BIN)/python benchmarks/bench_quality.py --output bench_quality/dsifn --sets dsifn
	$(BIN)/python benchmarks/bench_quality.py --output bench_quality/airchange --sets airchange

# A Ray head + a second Ray node, MLflow (SQLite, artifacts on S3) and a loopback S3 server,
# endpoints on 127.0.0.1 (infra/local/stack.py); `source .stack/env` points clients at it.
stack: $(STAMP)
	$(BIN)/python infra/local/stack.py up

stack-down:
	$(BIN)/python infra/local/stack.py down

clean:
	rm -rf demo_output .changeseg runs mlflow.db .pytest_cache
