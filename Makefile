# AIGNE Hub image service. `make run` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SITE = $(shell $(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
PROTOS := $(shell find proto -name '*.proto' | sort)
DESCRIPTOR := gen/descriptor/aigne_hub.pb
# The REST door's OpenAPI document, made from the descriptor (the console serves it).
OPENAPI := gen/openapi/aigne_hub.openapi.json
# The contract as released: `make breaking` refuses changes that would break its clients.
BASELINE := contract/baseline.binpb
BREAKING_AGAINST ?= HEAD~1

# Node: the protoc-gen-es plugin, the TypeScript stubs' runtime and the TypeScript example,
# pinned by package-lock.json (npm workspaces: gen/ts, examples/ts).
NODE_STAMP := node_modules/.installed
# Go runs in GOPATH mode over Debian's Go library packages: the Go module proxy is out of
# reach. build/gopath maps the import path aigne.dev/hub/... onto gen/go and examples/go.
GO_IMPORT := aigne.dev/hub
GOPATH_DIR := $(CURDIR)/build/gopath
GO := GO111MODULE=off GOFLAGS= GOPATH=$(GOPATH_DIR):/usr/share/gocode go
# The Debian packages behind the Go stubs and the Go example. The protobuf 1-5 package must be
# named: grpc's dependency is also met by the 1-3 one, whose codec cannot decode messages made
# by today's protoc-gen-go. Chromium: the console's tests drive it headless with Playwright
# (tests/browser.py), which cannot download a browser of its own here.
DEBIAN_PACKAGES := golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev \
  golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev golang-google-genproto-dev \
  chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: install run test lint gen check-gen proto-deps breaking baseline system-deps node-deps \
  gopath examples deploy-config bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml gen/python/pyproject.toml constraints.txt
	$(BIN)/python -m pip install -q -c constraints.txt -e ./gen/python -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Debian packages: installs only what is missing (a no-op on a prepared machine).
# PostgreSQL: only its binaries are used (tests/postgres.py starts a throwaway cluster as an
# unprivileged user on a free port), so the package must not create and start the usual
# `main` cluster: the createcluster.d setting says so before it is installed.
system-deps:
	@missing=$$(for p in $(DEBIAN_PACKAGES) postgresql; do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  if echo "$$missing" | grep -qw postgresql; then \
	    $(SUDO) mkdir -p /etc/postgresql-common/createcluster.d && \
	    echo "create_main_cluster = false" \
	      | $(SUDO) tee /etc/postgresql-common/createcluster.d/aigne-hub.conf >/dev/null; \
	  fi; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(NODE_STAMP): package.json package-lock.json gen/ts/package.json examples/ts/package.json
	@node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 20 ? 1 : 0)' \
	  || { echo "Node.js 20 or later is needed"; exit 1; }
	npm ci --no-audit --no-fund
	touch $@

node-deps: $(NODE_STAMP)

# REPLICAS=N: N server processes behind one Envoy (README "Several replicas").
REPLICAS ?= 1
run: install
	$(BIN)/python -m service run --replicas $(REPLICAS)

test: install system-deps node-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# google/api and google/rpc come from googleapis-common-protos (the Buf Schema Registry is
# out of reach); buf and protoc read them from third_party/proto.
proto-deps: install
	rm -rf third_party/proto && mkdir -p third_party/proto/google/api third_party/proto/google/rpc
	cp $(SITE)/google/api/{annotations,http,httpbody}.proto third_party/proto/google/api/
	cp $(SITE)/google/rpc/{status,error_details,code}.proto third_party/proto/google/rpc/

gen: proto-deps node-deps system-deps
	rm -rf gen/python/aigne $(DESCRIPTOR) $(OPENAPI)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m grpc_tools.protoc -Iproto -Ithird_party/proto \
	  --python_out=gen/python --grpc_python_out=gen/python \
	  --mypy_out=gen/python --mypy_grpc_out=gen/python $(PROTOS)
	$(BIN)/python -m grpc_tools.protoc -Iproto -Ithird_party/proto --include_imports \
	  --include_source_info --descriptor_set_out=$(DESCRIPTOR) $(PROTOS) \
	  google/rpc/status.proto google/rpc/error_details.proto
	for d in $$(find gen/python/aigne -type d -not -name __pycache__); do touch $$d/__init__.py; done
	touch gen/python/aigne/py.typed
	$(BIN)/python -m service.cli.openapi $(DESCRIPTOR) $(OPENAPI)
	find gen/ts \( -name '*_pb.js' -o -name '*_pb.d.ts' \) -not -path '*/node_modules/*' -delete
	find gen/ts -mindepth 1 -type d -empty -not -path '*/node_modules*' -delete
	rm -rf gen/go/aigne
	$(BIN)/buf generate --template buf.gen.ts.yaml
	$(BIN)/buf generate --template buf.gen.go.yaml

# CI: the committed gen/ must be exactly what `make gen` makes from proto/.
check-gen: gen
	@test -z "$$(git status --porcelain -- gen)" \
	  || { git status --short -- gen; echo "gen/ is stale: run 'make gen' and commit it"; exit 1; }

lint: proto-deps system-deps node-deps gopath
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code proto
	$(BIN)/ruff check .
	$(BIN)/mypy service
	$(BIN)/lint-imports   # the house plan: pyproject.toml [tool.importlinter]
	@test -z "$$(gofmt -l examples/go)" || { gofmt -l examples/go; echo "run gofmt -w"; exit 1; }
	$(GO) vet $(GO_IMPORT)/examples/go
	npx -w examples/ts tsc --noEmit -p .

# The contract must not break a client built against the previous commit's contract, nor one
# built against the released baseline ($(BASELINE)). Without a previous commit (a shallow or
# one-commit clone) only the baseline is checked.
breaking: proto-deps
	$(BIN)/buf breaking proto --against $(BASELINE)
	@if ! git rev-parse -q --verify '$(BREAKING_AGAINST)^{commit}' >/dev/null \
	    || ! git cat-file -e '$(BREAKING_AGAINST):proto' 2>/dev/null; then \
	  echo "breaking: no contract at $(BREAKING_AGAINST); checked against $(BASELINE) only"; \
	else \
	  set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	  git archive '$(BREAKING_AGAINST)' -- buf.yaml proto | tar -x -C "$$tmp"; \
	  cp -r third_party "$$tmp"/; \
	  $(BIN)/buf build "$$tmp/proto" -o "$$tmp/against.binpb"; \
	  echo "$(BIN)/buf breaking proto --against <proto at $(BREAKING_AGAINST)>"; \
	  $(BIN)/buf breaking proto --against "$$tmp/against.binpb"; \
	fi

# Rewrite the baseline: only when a contract version is released, never to make `breaking` pass.
baseline: proto-deps
	mkdir -p $(dir $(BASELINE))
	$(BIN)/buf build proto --exclude-source-info -o $(BASELINE)

# The example clients (tests/test_polyglot.py runs them): build/examples/go-client and
# examples/ts/dist/client.js; the Python one runs as it is.
gopath:
	@mkdir -p $(GOPATH_DIR)/src/$(GO_IMPORT)/gen $(GOPATH_DIR)/src/$(GO_IMPORT)/examples
	@ln -sfn $(CURDIR)/gen/go $(GOPATH_DIR)/src/$(GO_IMPORT)/gen/go
	@ln -sfn $(CURDIR)/examples/go $(GOPATH_DIR)/src/$(GO_IMPORT)/examples/go

build/examples/go-client: $(shell find gen/go examples/go -name '*.go') | gopath
	$(GO) build -o $@ $(GO_IMPORT)/examples/go

examples/ts/dist/client.js: examples/ts/client.ts examples/ts/tsconfig.json $(NODE_STAMP) \
    $(shell find gen/ts -name '*_pb.*' -not -path '*/node_modules/*')
	npm run --silent build -w examples/ts

examples: system-deps node-deps build/examples/go-client examples/ts/dist/client.js

# deploy/envoy-config.yaml: Envoy's config for Kubernetes, rendered from deploy/envoy.env.
deploy-config: install
	$(BIN)/python deploy/render.py

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) third_party node_modules build examples/ts/dist
