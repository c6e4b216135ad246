# Two entry points, each installing what it needs: `make book` (the website) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= quick

.PHONY: book test data report clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

data:
	bash .ci/ensure_data.sh

book: $(STAMP) data
	$(PY) -m bnlib book --profile $(PROFILE)

test: $(STAMP) data
	bash .ci/ensure_browser.sh
	$(PY) -m pytest

report: $(STAMP)
	$(PY) -m bnlib report

clean:
	rm -rf _build
