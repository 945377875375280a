# The two commands: `make demo` (main job on real input) and `make test`.
# Each creates .venv if missing and installs the project into it (torch only with the test extra, pinned).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_out

.PHONY: demo test install install-test bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(PY) -m vtp_jax.demo --out $(DEMO_DIR)

# Test files run in parallel, one whole file per worker (module fixtures are built once), at most 4 workers.
test: install-test
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadfile

bench: install-test
	$(VENV)/bin/vtp-bench

clean:
	rm -rf $(DEMO_DIR) build *.egg-info
