# `make demo` and `make test` each do all their own set-up on a fresh Debian machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.meshlib-installed

.PHONY: venv demo test lint typecheck unit servers bench clean

$(STAMP): pyproject.toml scripts/venv.sh
	bash scripts/venv.sh $(VENV)
	touch $(STAMP)

venv: $(STAMP)

servers:
	bash scripts/install-servers.sh

demo: $(STAMP)
	$(VENV)/bin/meshlib demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict src tests/typing_api.py

unit: $(STAMP)
	$(VENV)/bin/pytest -q

test: $(STAMP) servers lint typecheck unit

bench: $(STAMP)
	$(VENV)/bin/meshlib bench

clean:
	rm -rf $(VENV) build src/*.egg-info .mypy_cache .pytest_cache .ruff_cache
