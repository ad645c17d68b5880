# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench soak lint install clean view

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
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

# Long runs (root: the disk-full episode mounts a small tmpfs). 1,000+ fuzzed malformed scans
# through the store into a daemon, then a stream of 1024^2 scans at 10 frames/s for
# SOAK_SECONDS (default one hour; `make soak SOAK_SECONDS=600` is the 10-minute variant) with a
# store restart and a disk-full episode; results into bench/RESULTS.md.
SOAK_SECONDS ?= 3600
FUZZ_SCANS ?= 1000
soak: $(STAMP)
	DFXM_FUZZ_SCANS=$(FUZZ_SCANS) $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_fuzz_store.py
	$(BIN)/python bench/soak.py --duration $(SOAK_SECONDS) --out bench/RESULTS.md

lint: $(STAMP)
	$(BIN)/ruff check dfxm_online tests bench

clean:
	rm -rf $(VENV) demo-output .dfxm-store
