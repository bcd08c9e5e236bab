# Two commands on a fresh machine: `make demo` (the embedded default) and `make test` (all tests).
PYTHON ?= python3
# Where pip may also look for torch. The default, PyTorch's CPU index, makes `torch==2.13.0` resolve
# to the CPU build (2.13.0+cpu, ~200 MB) instead of PyPI's CUDA build (several GB); where that index
# cannot be reached, pip falls back to its other indexes. `--no-deps`: only torch is looked up there;
# its own requirements come with the project's install below. For a CUDA build:
# `make setup TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128` (or empty for PyPI's).
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
TORCH_INDEX := $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL),)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test setup

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-deps $(TORCH_INDEX) torch==2.13.0
	$(PY) -m pip install --quiet -e ".[training,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/volumetricsr demo --overwrite

# The suite runs twice: as it comes (2 threads, the CPU's widest vector kernels), then on one thread with
# PyTorch's AVX2 kernels, so that no tolerance holds on one CPU only.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q
	OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=avx2 $(PY) -m pytest -q
