# The two set-up commands are `make demo` and `make test`; both need only python3 and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint type pytest demo bench matrix clean

$(BIN)/python:
	@echo "make: creating $(VENV) with $(PYTHON) (first run only)"
	$(PYTHON) -m venv $(VENV)

# pip's own lines (one per package) are the progress of the first run's install.
$(STAMP): $(BIN)/python pyproject.toml
	@echo "make: installing a-track-sdk[all] and the dev tools into $(VENV) (first run, or pyproject.toml changed)"
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BIN)/python -m pip install --progress-bar off -e ".[all]" --group dev
	touch $(STAMP)
	@echo "make: $(VENV) is ready"

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

type: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The whole test suite: lint, types, then every test.
test: lint type pytest

demo: $(STAMP)
	$(BIN)/python -m example_apps.demo

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

# Every tox env (framework versions x Python versions); absent interpreters are skipped.
# Interpreters installed by pyenv (if any) are offered to tox; absent ones are skipped.
matrix: $(STAMP)
	$(BIN)/tox run --discover $$(ls $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.1*/bin/python3.1* 2>/dev/null | grep -E 'python3\.[0-9]+$$')

clean:
	rm -rf $(VENV) .tox .mypy_cache .ruff_cache .pytest_cache
