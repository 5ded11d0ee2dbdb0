# One command each: `make run` (set up + bundled offline example), `make test` (set up + tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test wheel-check bench models clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) run_local.py --example

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -q

wheel-check: install
	bash .ci/wheel-check

bench: install
	$(PY) -m pip install -q -e '.[train]'
	$(PY) bench/run_all.py

models: install
	$(PY) -m pip install -q -e '.[train]'
	$(PY) models/build_id_ner.py

clean:
	rm -rf $(VENV) data-example .work
