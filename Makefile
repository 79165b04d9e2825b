# Two commands on a fresh machine: `make demo` runs the whole job, `make test` passes the tests.
# Each creates .venv and installs the project with its extras when needed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

# setup.py builds the one compiled part (export/_header_look.c, in place): a C compiler and
# Python's headers; without them ridl runs the same look in Python, slower.
$(STAMP): pyproject.toml setup.py export/_header_look.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ridl demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The suite runs in TEST_WORKERS processes, a test file to each (module fixtures such as
# Orthanc and SeaweedFS start once per file); much of it waits on servers and subprocesses.
TEST_WORKERS ?= 2

test: lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

bench: $(STAMP)
	$(BIN)/python benchmarks/deid_throughput.py

.PHONY: bench-deid-process
bench-deid-process: $(STAMP)
	$(BIN)/python benchmarks/deid_process.py

.PHONY: bench-selection
bench-selection: $(STAMP)
	$(BIN)/python benchmarks/selection.py

clean:
	rm -rf $(VENV) .ridl .pytest_cache .mypy_cache .ruff_cache

.PHONY: bench-export
bench-export: $(STAMP)
	$(BIN)/python benchmarks/export.py

.PHONY: bench-screening
bench-screening: $(STAMP)
	$(BIN)/python benchmarks/screening.py

.PHONY: bench-header-kernel
bench-header-kernel: $(STAMP)
	$(BIN)/python benchmarks/header_kernel.py
