# Every target sets up its own virtual environment from pyproject.toml first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve test lint bench bench-all clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)  ## run the service on the embedded database (127.0.0.1:8000)
	$(BIN)/profile-audit serve $(ARGS)

test: $(STAMP)  ## the whole test suite (starts its own PostgreSQL unless TEST_DATABASE_URL is set)
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check app migrations tests bench
	$(BIN)/ruff format --check app migrations tests bench
	$(BIN)/mypy

bench: $(STAMP)  ## ingest benchmark; prints a table (see bench/README.md)
	$(BIN)/python -m bench $(ARGS)

bench-all: $(STAMP)  ## every benchmark, writes BENCHMARKS.md (see bench/README.md); ARGS=--quick: smoke run
	$(BIN)/python -m bench.suite $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
