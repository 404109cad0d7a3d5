# minimc — every target creates the virtual environment first when it is missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1

.PHONY: all book test test-unit test-exercises test-notebooks grade lab bench demo clean

all: book

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# The main job.
book: $(STAMP)
	$(BIN)/python -m minimc.demo

# Everything CI checks.
test: $(STAMP)
	$(BIN)/python -m pytest tests

demo: $(STAMP)
	$(BIN)/python -m minimc.demo

bench: $(STAMP)
	$(BIN)/python -m minimc.bench

lab: $(STAMP)
	$(BIN)/jupyter lab book/

clean:
	rm -rf book/_build .pytest_cache
