# Every target creates .venv when it is missing or older than pyproject.toml, then runs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: demo test bench clean

# Installed without their dependencies, per extra. The tests run timm's RMSpropTF, whose
# module needs torch alone, while timm's package imports torchvision, which has no build for
# the CPU torch the test extra pins (tests/helpers.py loads the module on its own).
NO_DEPS_test := timm==1.0.29

# One stamp per extra: a target installs only what it needs, and re-installs when
# pyproject.toml or this file changes.
$(VENV)/.stamp-%: pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[$*]'
	$(if $(NO_DEPS_$*),$(PIP) install --quiet --no-deps $(NO_DEPS_$*))
	@touch $@

demo: $(VENV)/.stamp-demo
	$(BIN)/python -m rmsprop_optax.demo

test: $(VENV)/.stamp-test
	$(BIN)/python -m pytest -p no:cacheprovider

bench: $(VENV)/.stamp-bench
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) demo_output benchmarks/out
