# The two commands a new user needs: `make run` and `make test`. Each builds its own .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run test lint typecheck unit contract integration bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel

$(VENV)/.deps: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]' --config-settings editable_mode=strict
	touch $@

# The strict editable install links files, so new modules need a (fast, offline) refresh.
install: $(VENV)/.deps
	@$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=strict >/dev/null 2>&1 || $(BIN)/python -m pip install --no-deps --no-build-isolation -e . --config-settings editable_mode=strict

run: install
	$(BIN)/chatcore serve --dev --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: install
	cd /tmp && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p chatcore

test: lint typecheck
	$(BIN)/pytest -q

unit: install
	$(BIN)/pytest -q tests/unit

clean:
	rm -rf $(VENV) build *.egg-info
