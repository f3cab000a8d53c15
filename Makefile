# One venv at .venv/ for development, tests and the demo.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test demo bench clean

$(VENV)/.installed: requirements-dev.txt setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

setup: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(VENV)/.installed
	$(VENV)/bin/seg-ros demo

bench: $(VENV)/.installed
	$(VENV)/bin/seg-ros bench --model ddrnet23_slim --size 512x1024 --runs 20

clean:
	rm -rf $(VENV) build *.egg-info
