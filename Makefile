# creditmeter — two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
DEMO   ?=
QUICK  ?=
BENCH_ARGS ?=

.PHONY: serve test check format bench clean install

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## Serve the API on $(HOST):$(PORT) with the embedded SQLite database (DEMO=1 seeds demo data).
serve: $(STAMP)
	$(BIN)/creditmeter serve --host $(HOST) --port $(PORT) $(if $(DEMO),--demo,)

## Lint, type checks, import contracts, then the whole suite on SQLite and PostgreSQL.
test: check
	$(BIN)/python -m pytest -n auto --cov=creditmeter --cov-report=term:skip-covered $(PYTEST_ARGS)

check: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

## Benchmarks against same-run baselines (docs/performance.md): the issue's scales; QUICK=1 for a
## short run; more flags in BENCH_ARGS (e.g. BENCH_ARGS='--only ingest_http --database sqlite').
bench: $(STAMP)
	@command -v wrk >/dev/null 2>&1 || apt-get install -y -qq wrk >/dev/null 2>&1 \
		|| (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null 2>&1 \
		|| echo "wrk is not available: gate_http falls back to a Python load generator"
	$(BIN)/python benchmarks/run.py $(if $(QUICK),--quick,) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
