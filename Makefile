# norton-jax: the two set-up commands are `make demo` and `make test`; both install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install test test-slow test-all demo clean

install: $(STAMP)

# Re-runs only when a requirements file or pyproject.toml changes.
$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The default suite (under 20 minutes on 2 cores); the checks marked `slow` (multi-process,
# full training runs, the ablation smoke) run in `make test-slow`; CI runs both.
test: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: install
	$(PY) -m norton_jax.demo --workdir workdir/demo

clean:
	rm -rf $(VENV) .pytest_cache
