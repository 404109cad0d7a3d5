# minimc — every target creates the virtual environment first when it is missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
NODE    := node_modules/.installed
export OMP_NUM_THREADS ?= 1

# Per-cell limit in seconds for `make book` and the notebook tests: a cell that runs longer, or
# whose kernel reply is lost, fails naming its notebook and cell. The slowest cell takes ~4 min.
export CELL_LIMIT ?= 300
# `timeout` is a last guard around the whole notebook run; skipped where absent (macOS).
TIMEOUT := $(shell command -v timeout >/dev/null 2>&1 && echo timeout 3600)
IMPL    ?= solutions

.PHONY: all venv book test test-unit test-exercises test-notebooks grade lab screenshots bench \
        results clean

all: book

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# MathJax, require.js and the widget manager, served by the book itself (no CDN): package-lock.json.
$(NODE): package.json package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund
	touch $(NODE)

# The main job: execute every chapter and build the HTML book offline; fails on any cell error.
# Then, where Chromium is installed, every page must load without a browser console error.
book: $(STAMP) $(NODE)
	$(BIN)/python scripts/build_book.py
	@$(BIN)/python scripts/check_pages.py; test $$? != 1

# Everything CI checks (.ci/run): library tests, exercise tests against solutions, the stub
# check, the repository checks, then every notebook. Runs both halves, fails if either fails.
test: $(STAMP)
	@$(MAKE) --no-print-directory test-unit; unit=$$?; \
	$(MAKE) --no-print-directory test-notebooks; nb=$$?; \
	test $$unit = 0 -a $$nb = 0

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests --ignore=tests/exercises

# The exercise tests with full tracebacks: make test-exercises IMPL=exercises (default solutions).
test-exercises: $(STAMP)
	$(BIN)/python -m pytest tests/exercises --impl=$(IMPL)

test-notebooks: $(STAMP)
	$(TIMEOUT) $(BIN)/python -m pytest --nbval-lax --nbval-current-env \
	  --nbval-cell-timeout=$(CELL_LIMIT) --timeout=$(CELL_LIMIT) -p no:cacheprovider \
	  book/ --ignore=book/_build

# The committed results (results/README.md), overwriting results/full: the experiments in two
# processes (one per core), then the plateau follow-ups (they read every other experiment's
# runs), then the timings alone on a quiet machine. About 1.5 hours on 2 cores.
FULL := $(BIN)/python scripts/experiments.py --size full --out results/full
results: $(STAMP)
	@echo "make results: about 1.5 hours on 2 cores; writes results/full/"
	$(FULL) --only lr,recall,parity,log_linear,ablations,niah,extrapolation & p=$$!; \
	$(FULL) --only deep,lm; s=$$?; wait $$p && test $$s = 0
	$(FULL) --only plateau & p=$$!; $(FULL) --only plateau_lr; s=$$?; wait $$p && test $$s = 0
	$(FULL) --only cost
	$(FULL) --figures-only

# Your score per chapter: make grade, or make grade CHAPTER=1.
grade: $(STAMP)
	@$(BIN)/python scripts/grade.py $(if $(CHAPTER),--chapter $(CHAPTER))

# make lab LAB_ARGS="--no-browser --allow-root" inside a container. .jupyter/lab-settings/
# (page_config.json) turns off JupyterLab's news plug-in: no "get notified about Jupyter news?"
# pop-up, no request to the internet.
lab: $(STAMP)
	@$(BIN)/jupyter labextension list 2>&1 | grep -q "@jupyter-widgets/jupyterlab-manager" || \
	  echo "warning: the ipywidgets extension is missing; widgets will not be live (pip install ipywidgets)"
	$(BIN)/jupyter lab book/ --LabApp.app_settings_dir="$(CURDIR)/.jupyter/lab-settings" $(LAB_ARGS)

# Screenshots of every built page (run make book first) into screenshots/.
screenshots:
	scripts/screenshots.sh

# Speed and memory ratios measured side by side (CPU); the Triton kernel's benchmark (GPU figures need a GPU).
bench: $(STAMP)
	$(BIN)/python scripts/bench.py
	$(BIN)/python scripts/bench_kernel.py

clean:
	rm -rf book/_build book/_assets book/_toc.yml screenshots .pytest_cache
