# Two entry points, each installing what it needs: `make book` (the website) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CLUSTER_STAMP := $(VENV)/.installed-cluster
PROFILE ?= quick

.PHONY: book test data report clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# the distributed engine (Dask) of `python -m bnlib zoo --engine dask`: the tests need it, the book does not
$(CLUSTER_STAMP): $(STAMP) requirements-cluster.txt
	$(PY) -m pip install -q -r requirements-cluster.txt
	touch $(CLUSTER_STAMP)

data:
	bash .ci/ensure_data.sh

book: $(STAMP) data
	$(PY) -m bnlib book --profile $(PROFILE)

test: $(STAMP) $(CLUSTER_STAMP) data
	bash .ci/ensure_browser.sh
	$(PY) -m pytest

report: $(STAMP)
	$(PY) -m bnlib report

clean:
	rm -rf _build
