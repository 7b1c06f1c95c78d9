# Every target creates .venv when it is missing or older than pyproject.toml, then runs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: demo test bench clean

# One stamp per extra: a target installs only what it needs, and re-installs when
# pyproject.toml changes.
$(VENV)/.stamp-%: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[$*]'
	@touch $@

demo: $(VENV)/.stamp-demo
	$(BIN)/python -m rmsprop_optax.demo

test: $(VENV)/.stamp-test
	$(BIN)/python -m pytest -p no:cacheprovider

bench: $(VENV)/.stamp-bench
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) demo_output benchmarks/out
