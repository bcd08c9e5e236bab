# Two commands on a fresh machine: `make demo` (the embedded default) and `make test` (all tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test setup

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[training,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/volumetricsr demo --overwrite

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q
