# `make demo` and `make test` each do all their own set-up on a fresh Debian machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.meshlib-installed
DEMO_STAMP := $(VENV)/.meshlib-demo-installed

.PHONY: venv demo test lint unasync typecheck unit docs servers bench clean

# the package editable, with its test, lint and docs tools
$(STAMP): pyproject.toml scripts/venv.sh
	bash scripts/venv.sh $(VENV) dev
	touch $(STAMP) $(DEMO_STAMP)

# the demo needs only the package and its runtime dependencies (httpx, tenacity, ...)
$(DEMO_STAMP): pyproject.toml scripts/venv.sh
	bash scripts/venv.sh $(VENV) demo
	touch $(DEMO_STAMP)

venv: $(STAMP)

servers:
	bash scripts/install-servers.sh

demo: $(DEMO_STAMP)
	@echo "make demo: running 'meshlib demo' (local backends on 127.0.0.1, about 15 s)"
	$(VENV)/bin/meshlib demo

# the sync twins (src/meshlib/_sync/{pool,transport}.py) are generated from src/meshlib/_async;
# src/meshlib/_xds/descriptors.bin is generated from the vendored .proto files;
# docstrings are Markdown (scripts/docstrings_md.py converts reST markup)
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests examples
	$(PY) scripts/unasync.py --check
	$(PY) scripts/xds_protos.py --check
	$(PY) scripts/docstrings_md.py --check

unasync: $(STAMP)
	$(PY) scripts/unasync.py

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict src tests/typing_api.py

unit: $(STAMP)
	$(VENV)/bin/pytest -q

# the documentation site, into site/; --strict turns broken links and warnings into errors
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

test: $(STAMP) servers lint typecheck unit docs

bench: $(STAMP)
	$(VENV)/bin/meshlib bench

clean:
	rm -rf $(VENV) build dist site src/*.egg-info .mypy_cache .pytest_cache .ruff_cache
