# Two commands: `make run` (a sidecar, against a local Trengo simulator unless
# TRENGO_API_TOKEN is set) and `make test` (everything, from a fresh clone).
# `make docs` serves the documentation site (mkdocs.yml, docs/) on 127.0.0.1:8000.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROTO := protos/trengo/sidecar/v1/sidecar.proto
STUBS := trengo/sidecar/v1/sidecar_pb2.py
CLIENT_GEN := clients/python/trengo_sidecar_client/_gen
CLIENT_STUBS := $(CLIENT_GEN)/sidecar_pb2.py
NODE_DIR := clients/node
BUF := $(NODE_DIR)/node_modules/.bin/buf

.PHONY: install proto client-proto run test lint test-python node buf bench clean client-wheel docs docs-build test-image

install: $(VENV)/.installed $(STUBS) $(CLIENT_STUBS)

# The venv, the generated stubs and the package (editable), all from scratch. The stamp lives
# inside the venv, so a deleted .venv is rebuilt rather than trusted.
$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "grpcio-tools>=1.66" "mypy-protobuf>=3.6"
	$(MAKE) --no-print-directory proto client-proto
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e clients/python
	@touch $@

$(STUBS): $(PROTO) | $(VENV)/.installed
	$(MAKE) --no-print-directory proto

$(CLIENT_STUBS): $(PROTO) | $(VENV)/.installed
	$(MAKE) --no-print-directory client-proto

# Python stubs (with .pyi for mypy) into trengo/sidecar/v1/, ignored by git.
proto:
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=. --grpc_python_out=. \
	  --plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy --mypy_out=. \
	  --plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc --mypy_grpc_out=. $(PROTO)
	touch trengo/__init__.py trengo/sidecar/__init__.py trengo/sidecar/v1/__init__.py

# The Python client ships a copy of the stubs inside its own package, so its wheel stands alone (and
# never clashes with the sidecar's trengo/ package). protoc writes absolute imports
# (from trengo.sidecar.v1 import ...): sed makes the one in the grpc stubs relative.
client-proto:
	rm -rf $(CLIENT_GEN) && mkdir -p $(CLIENT_GEN).tmp
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=$(CLIENT_GEN).tmp \
	  --grpc_python_out=$(CLIENT_GEN).tmp --plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy \
	  --mypy_out=$(CLIENT_GEN).tmp --plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc \
	  --mypy_grpc_out=$(CLIENT_GEN).tmp $(PROTO)
	mv $(CLIENT_GEN).tmp/trengo/sidecar/v1 $(CLIENT_GEN) && rm -rf $(CLIENT_GEN).tmp
	sed -i 's/^from trengo\.sidecar\.v1 import /from . import /' $(CLIENT_GEN)/sidecar_pb2_grpc.py*
	touch $(CLIENT_GEN)/__init__.py

# make run: the sidecar with demo defaults against the simulator (SIDECAR_*/TRENGO_* env and ARGS="--flags"
# on top; KEEP_STATE=1 keeps its temporary SQLite); with a token or CONFIG=file, the sidecar alone.
run: install
	@if [ -z "$$TRENGO_API_TOKEN$$TRENGO_API_TOKEN_FILE$(CONFIG)" ]; then \
	  exec $(BIN)/python -m sidecar.simulator.demo $(if $(KEEP_STATE),--keep-state) $(ARGS); \
	else \
	  exec $(BIN)/trengo-sidecar $(if $(CONFIG),--config $(CONFIG)) $(ARGS); \
	fi

# npm packages from the lock file: grpc-js for the Node client, and the buf CLI.
node: $(NODE_DIR)/node_modules/.package-lock.json
$(NODE_DIR)/node_modules/.package-lock.json: $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# buf breaking compares the contract with main (or origin/main), or on main with the commit before.
BUF_BASE ?= $(shell if [ "$$(git rev-parse --abbrev-ref HEAD 2>/dev/null)" = main ]; then echo HEAD~1; \
  elif git rev-parse -q --verify main >/dev/null; then echo main; else echo origin/main; fi)
buf: node
	$(BUF) lint
	@if git cat-file -e $(BUF_BASE):buf.yaml 2>/dev/null; then \
	  echo "buf breaking --against .git#ref=$(BUF_BASE)"; \
	  $(BUF) breaking --against '.git#ref=$(BUF_BASE)'; \
	else echo "buf breaking: $(BUF_BASE) has no buf.yaml, nothing to compare"; fi

# lint-imports: the layers in pyproject.toml's [tool.importlinter] (no cycle, no upward import).
lint: install
	$(BIN)/ruff check sidecar tests clients/python benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

test-python: install node
	$(BIN)/pytest

# The documentation site. --strict turns every warning (a broken link, a missing page, an unknown
# anchor: mkdocs.yml's validation) into a failure. The build goes to a temporary folder, never site/.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# (Not --quiet: it hides the warnings from the counter --strict reads, and the build would pass.)
docs-build: install
	@out=$$(mktemp -d) && trap 'rm -rf "$$out"' EXIT && \
	  NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir "$$out"

test: lint buf docs-build test-python

# The image, built from the Dockerfile with buildah (no container engine needed) on a local
# python:3.11-slim made by debootstrap, then started and checked for real: tests/image/run.sh.
# Needs root; installs buildah and debootstrap with apt when missing. CI runs it after `test`.
test-image: install
	bash tests/image/run.sh

# The Python client's wheel, with its generated stubs inside, into dist/.
client-wheel: install
	$(BIN)/python -m build --wheel --outdir dist clients/python

bench: install
	$(BIN)/python -m benchmarks
	$(BIN)/python -m benchmarks.queue
	$(BIN)/python -m benchmarks.ingest

clean:
	rm -rf $(VENV) trengo $(CLIENT_GEN) dist site $(NODE_DIR)/node_modules .pytest_cache .mypy_cache .ruff_cache
