# Two entry points for a fresh machine (see README):
#   make demo   - create .venv if missing, install, run the main job on its default
#   make test   - create .venv if missing, install with the dev, triton and eval extras, run lint + tests
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned to the CPU wheel first, so the project's looser range never pulls a CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,triton,eval]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mcrnn demo

test: $(STAMP)
	$(VENV)/bin/ruff check mcrnn tests
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -n 2 tests

bench: $(STAMP)
	$(VENV)/bin/mcrnn bench

clean:
	rm -rf $(VENV) build *.egg-info
