# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint install clean view

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml setup.py $(wildcard dfxm_online/online/_*.[ch]) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/dfxm-online demo --output-dir demo-output

test: $(STAMP)
	$(BIN)/ruff check dfxm_online tests bench
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

view: $(STAMP)
	$(BIN)/dfxm-online view --output-dir demo-output

bench: $(STAMP)
	$(BIN)/python bench/run.py --out bench/RESULTS.md

lint: $(STAMP)
	$(BIN)/ruff check dfxm_online tests bench

clean:
	rm -rf $(VENV) demo-output .dfxm-store
