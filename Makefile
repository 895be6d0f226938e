# Entry points: `make train`, `make test` (inner loop: skips the end-to-end tests marked slow) and
# `make test-all` (everything; what CI runs). All create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ceod-installed

.PHONY: train test test-all install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

EXPERIMENT ?= +experiment=decoy_digits
# pytest-xdist workers: one per core, at most 4 (each holds torch + Lightning in memory); JOBS=0 runs serially
JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)

train: $(STAMP)
	$(PY) -m ceod.train $(EXPERIMENT) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -n $(JOBS) -m "not slow" $(ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q -n $(JOBS) $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
