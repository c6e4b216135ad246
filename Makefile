# Entry points, each installing what it needs: `make book` (the website), `make test`, `make lab` (live notebooks).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LAB_STAMP := $(VENV)/.installed-lab
CLUSTER_STAMP := $(VENV)/.installed-cluster
PROFILE ?= quick

.PHONY: book test lab data report clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# JupyterLab in the project's venv (requirements-lab.txt), apart from what `make book` needs
$(LAB_STAMP): $(STAMP) requirements-lab.txt
	$(PY) -m pip install -q -r requirements-lab.txt
	touch $(LAB_STAMP)

# the distributed engine (Dask) of `python -m bnlib zoo --engine dask`: the tests need it, the book does not
$(CLUSTER_STAMP): $(STAMP) requirements-cluster.txt
	$(PY) -m pip install -q -r requirements-cluster.txt
	touch $(CLUSTER_STAMP)

data:
	bash .ci/ensure_data.sh

book: $(STAMP) data
	$(PY) -m bnlib book --profile $(PROFILE)

test: $(STAMP) $(LAB_STAMP) $(CLUSTER_STAMP) data
	bash .ci/ensure_browser.sh
	$(PY) -m pytest

report: $(STAMP)
	$(PY) -m bnlib report

# The chapters live, with the project's kernel: the theory and ablations batch-size sliders move there.
lab: $(LAB_STAMP) data
	$(PY) -m jupyterlab --ServerApp.root_dir=$(CURDIR) $(if $(filter 0,$(shell id -u)),--allow-root) \
		chapters/theory.ipynb chapters/ablations.ipynb

clean:
	rm -rf _build
