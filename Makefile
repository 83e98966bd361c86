# msimaging: two commands on a fresh machine.
#   make demo   create .venv, install, run the main job on the built-in synthetic study
#   make test   create/update .venv with test extras, then ruff, the architecture contract, pytest
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
DEMO_DIR ?= demo_output

.PHONY: demo test quicktest lint contract bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the package metadata changes.
$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

demo: $(VENV)/.installed
	$(BIN)/msimaging demo $(DEMO_DIR)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests benchmarks examples

contract: $(VENV)/.installed-test
	$(BIN)/lint-imports

test: lint contract
	$(BIN)/python -m pytest -q

# Faster loop for development: skip tests marked slow.
quicktest: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -x -m "not slow"

bench: $(VENV)/.installed-test
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache build src/*.egg-info
