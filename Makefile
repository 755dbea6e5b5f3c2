# Tongban — the commands in README.md. Everything runs inside .venv, created on demand.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PROTOS := $(wildcard proto/tongban/v1/*.proto)

.PHONY: lock serve test test-year-ahead system-packages lint typecheck pytest proto proto-check bench bench-quick demo clean

# Runtime install: enough to run a node.
$(VENV)/.runtime: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e .
	touch $@

# Development install: tests, linters and the pinned code generators.
$(VENV)/.dev: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,dev]'
	touch $(VENV)/.runtime $@

# Rewrite constraints.txt from a fresh install of the newest versions pyproject.toml allows.
# Run the whole of `make test` afterwards before committing the new file.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet -e '.[test,dev]'
	{ sed -n '/^#/p' constraints.txt; .lock-venv/bin/pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .lock-venv

serve: $(VENV)/.runtime  ## start a node on embedded PostgreSQL with the demo departments
	$(BIN)/tongban serve --demo

demo: $(VENV)/.runtime  ## run the end-to-end story against a fresh node
	$(BIN)/tongban demo

test: system-packages $(VENV)/.dev proto-check lint typecheck pytest  ## everything CI checks

# The Debian packages the tests need (poppler-utils, chromium, fonts-noto-cjk, faketime):
# installed when missing and run as root; otherwise stops here naming the apt-get line.
system-packages:
	@scripts/system-packages

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev
	$(BIN)/mypy

# One worker per core (pytest-xdist): each worker starts its own PostgreSQL and broker.
pytest: system-packages $(VENV)/.dev
	$(BIN)/pytest -n auto

# No test may depend on the wall clock being before or after some date: run the suite
# with every process (the node, PostgreSQL, chromium) a year ahead. Not part of `test`
# (it doubles CI time); run it when touching anything with dates or certificates.
test-year-ahead: system-packages $(VENV)/.dev
	FAKETIME_DONT_RESET=1 faketime -f '+365d' $(BIN)/pytest -n auto

proto: $(VENV)/.dev  ## regenerate the gRPC/protobuf code in proto/tongban/v1
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m grpc_tools.protoc -Iproto \
	  --python_out=proto --grpc_python_out=proto --mypy_out=proto --mypy_grpc_out=proto \
	  $(PROTOS)

proto-check: $(VENV)/.dev  ## fail if the generated code is not what `make proto` writes
	@rm -rf .proto-check && mkdir -p .proto-check
	@PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m grpc_tools.protoc -Iproto \
	  --python_out=.proto-check --grpc_python_out=.proto-check \
	  --mypy_out=.proto-check --mypy_grpc_out=.proto-check $(PROTOS) >/dev/null
	@for f in .proto-check/tongban/v1/*; do \
	  cmp -s $$f proto/tongban/v1/$$(basename $$f) || { \
	    echo "proto/tongban/v1/$$(basename $$f) is stale: run 'make proto' and commit"; \
	    rm -rf .proto-check; exit 1; }; done
	@rm -rf .proto-check

bench: $(VENV)/.dev  ## run the benchmarks; each figure is printed beside its baseline
	$(BIN)/python -m bench

bench-quick: $(VENV)/.dev  ## every phase in short windows on small data (about 2 minutes)
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .proto-check
