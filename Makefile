# v3ctl — common tasks. `make help` lists them.
SHELL := /bin/bash
GO ?= go
BIN := bin/v3ctl
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)
DATE ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS := -s -w -X github.com/v3ctl/v3ctl/internal/cli.version=$(VERSION) \
	-X github.com/v3ctl/v3ctl/internal/cli.commit=$(COMMIT) -X github.com/v3ctl/v3ctl/internal/cli.date=$(DATE)
# Tests run against V3CTL_TEST_DATABASE_URL when set, otherwise against a
# private throwaway PostgreSQL that the test harness starts itself.
TEST_FLAGS ?= -race -timeout 30m

.PHONY: help build test test-short test-faults lint demo completions docs clean bench release-snapshot

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

build: ## build bin/v3ctl and the example job handler bin/extract-text
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/v3ctl
	$(GO) build -o bin/extract-text ./examples/extract-text

test: ## run the whole test suite against real PostgreSQL
	$(GO) test $(TEST_FLAGS) ./...

test-faults: ## the long fault suite: SIGKILLed workers, PostgreSQL restart, dropped connections, pinned xmin (10k jobs each)
	$(GO) test -race -tags faults -timeout 40m -run Long -v ./internal/faults/

bench: ## v3ctl vs River on one private PostgreSQL in one run, next to the physical update rate
	cd bench && $(GO) run . $(BENCH_FLAGS)

test-short: ## quick subset (skips server start/stop tests)
	$(GO) test -short ./...

lint: ## go vet (the bench/ module too) and a gofmt check
	$(GO) vet ./...
	cd bench && $(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

demo: build ## the main job: dev PostgreSQL, schema, demo data, a worker running a batch of jobs, stats
	@./scripts/demo.sh

completions: build ## regenerate completions/ (bash, zsh, fish, powershell)
	@mkdir -p completions
	./$(BIN) gen-docs completions completions
	@echo "completions/ regenerated"

clean: ## remove build output
	rm -rf bin dist

docs: build ## regenerate docs/reference (command reference from the cobra tree)
	./$(BIN) gen-docs markdown docs/reference

GORELEASER ?= $(shell command -v goreleaser 2>/dev/null || echo $$($(GO) env GOPATH)/bin/goreleaser)

release-snapshot: ## build all archives offline with goreleaser (dist/); install: go install github.com/goreleaser/goreleaser/v2@v2.15.1
	V3CTL_COMMIT=$(COMMIT) $(GORELEASER) release --snapshot --clean --skip=publish
