# ipledger: one replicated, etcd-backed IP address allocator for Kubernetes on AWS.
# `make` lists the targets. `make demo` and `make test` are the two to start with.

SHELL        := /bin/bash
GO           ?= go
BIN          := bin
PROTOC       ?= protoc
PROTO_DIR    := proto
PROTO_FILES  := $(wildcard $(PROTO_DIR)/ipledger/v1/*.proto)
TEST_TIMEOUT ?= 14m
# fuzz-short runs each fuzz target this long beyond its committed corpus (testdata/fuzz/).
FUZZTIME     ?= 10s
# Each new interesting input is minimized for at most this many runs (Go's default, 60 s, let
# the short runs spend most of their time minimizing instead of fuzzing).
FUZZMINIMIZE ?= 100x
FUZZ_TARGETS := ./cni:FuzzParseConfig ./cni:FuzzParseAttachment ./server/ec2sim:FuzzQuery \
                ./server/ledger:FuzzLedger ./agent/pool:FuzzCheckpoint ./agent/pool:FuzzJournal
# Packages of the binaries; a binary is built once its package exists.
CMDS := server/cmd/ipledger-server server/cmd/ipledgerctl server/cmd/ipledger-ec2sim \
        agent/cmd/ipledger-agent cni/cmd/ipledger-cni deploy/cmd/ipledger-cni-install \
        e2e/cmd/ipledger-bench e2e/cmd/ipledger-demo
PRESENT_CMDS := $(foreach c,$(CMDS),$(if $(wildcard $(c)/*.go),$(c)))
# Version stamping (internal/version): the release is `git describe` (the short commit while
# there is no tag, "-dirty" with uncommitted changes), the date is the commit's (reproducible:
# the same tree links the same binary, so the Go build cache keeps working). Override on the
# command line for release builds: make build VERSION=v0.2.0. Image tags use the same VERSION.
# Evaluated once, when make starts: the tests compare the binaries with these values.
ifeq ($(origin VERSION),undefined)
VERSION      := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
endif
ifeq ($(origin COMMIT),undefined)
COMMIT       := $(shell git rev-parse HEAD 2>/dev/null)
endif
ifeq ($(origin DATE),undefined)
DATE         := $(shell TZ=UTC git log -1 --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ 2>/dev/null)
endif
VERSION_PKG  := github.com/ipledger/ipledger/internal/version
LDFLAGS      := -X $(VERSION_PKG).Version=$(VERSION) -X $(VERSION_PKG).Commit=$(COMMIT) -X $(VERSION_PKG).Date=$(DATE)
# Test-only tools live in their own module (e2e/tools), so their dependencies stay out of the
# main module's graph; helm is pinned there as a Go tool and built into bin/ (cached by the Go
# build cache: seconds once built).
TOOLS_MOD    := e2e/tools
HELM_VERSION  = $(shell cd $(TOOLS_MOD) && $(GO) list -m -f '{{.Version}}' helm.sh/helm/v4)

.DEFAULT_GOAL := help
.PHONY: help deps build version tools manifests test fuzz-short soak demo bench bench-quick lint proto verify clean

help: ## Show this list.
	@echo "ipledger make targets:"
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  %-12s %s\n", $$1, $$2}'

deps: ## Install what the tests need (Debian packages, Go tools); safe to re-run.
	@.ci/install-deps

build: ## Build every binary into bin/, stamped with VERSION (git describe), commit and date.
	@mkdir -p $(BIN)
	@for c in $(PRESENT_CMDS); do \
		echo "go build -ldflags '...' -o $(BIN)/$$(basename $$c) ./$$c"; \
		$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/$$(basename $$c) ./$$c || exit 1; \
	done
	@if [ -x $(BIN)/ipledger-cni ]; then cp $(BIN)/ipledger-cni $(BIN)/ipledger; fi

# The Kubernetes control plane the e2e tests run (issue #15): k8s.io/kubernetes, pinned in
# e2e/tools/go.mod with its staging modules. A cold build takes about 5 minutes of 2 cores;
# the Go build cache makes it seconds after.
KUBE_VERSION := v1.37.2
KUBE_LDFLAGS := -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) -X k8s.io/component-base/version.gitMajor=1 \
                -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/component-base/version.gitTreeState=clean

tools: ## Build the pinned test tools into bin/ (helm, kube-apiserver and kube-scheduler, from e2e/tools).
	@mkdir -p $(BIN)
	$(GO) build -C $(TOOLS_MOD) -ldflags '-X helm.sh/helm/v4/internal/version.version=$(HELM_VERSION)' -o $(CURDIR)/$(BIN)/helm helm.sh/helm/v4/cmd/helm
	@for c in kube-apiserver kube-scheduler; do \
		echo "go build -C $(TOOLS_MOD) -o $(BIN)/$$c k8s.io/kubernetes/cmd/$$c"; \
		$(GO) build -C $(TOOLS_MOD) -ldflags '$(KUBE_LDFLAGS)' -o $(CURDIR)/$(BIN)/$$c k8s.io/kubernetes/cmd/$$c || exit 1; \
	done

manifests: tools ## Render deploy/kustomize (base, cert-manager, monitoring) from the Helm chart.
	IPLEDGER_BIN_DIR=$(CURDIR)/$(BIN) $(GO) test ./deploy -run '^TestKustomizeIsRenderedFromTheChart$$' -count=1 -update

test: deps build tools ## Install what is needed, then go vet and go test -race over everything.
	$(GO) vet ./...
	@mkdir -p $(BIN)/artifacts
	IPLEDGER_BIN_DIR=$(CURDIR)/$(BIN) IPLEDGER_ARTIFACTS_DIR=$(CURDIR)/$(BIN)/artifacts IPLEDGER_VERSION=$(VERSION) IPLEDGER_COMMIT=$(COMMIT) \
		$(GO) test -race -timeout $(TEST_TIMEOUT) ./...
	@$(MAKE) --no-print-directory fuzz-short

fuzz-short: ## Fuzz each target for FUZZTIME (10s): CNI config and env, EC2 queries, ledger, checkpoint.
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t##*:}; \
		echo "go test -run='^\$$' -fuzz='^$$fn\$$' -fuzztime=$(FUZZTIME) -fuzzminimizetime=$(FUZZMINIMIZE) $$pkg"; \
		$(GO) test -run='^$$' -fuzz="^$$fn\$$" -fuzztime=$(FUZZTIME) -fuzzminimizetime=$(FUZZMINIMIZE) $$pkg || exit 1; \
	done

SOAK_DURATION ?= 1h
SOAK_SEED     ?= 1
soak: deps build ## Soak: churn and faults on 3 etcd members, 3 servers and agents (SOAK_DURATION=1h, SOAK_SEED=1).
	@mkdir -p $(BIN)/artifacts
	IPLEDGER_SOAK_DURATION=$(SOAK_DURATION) IPLEDGER_SOAK_SEED=$(SOAK_SEED) IPLEDGER_BIN_DIR=$(CURDIR)/$(BIN) \
		IPLEDGER_ARTIFACTS_DIR=$(CURDIR)/$(BIN)/artifacts $(GO) test -race -count=1 -timeout 0 -run '^TestSoak$$' -v ./e2e/

demo: build ## Run the demo: server (embedded etcd + simulated EC2), agents, pods; Ctrl-C stops it.
	@if [ -x $(BIN)/ipledger-demo ]; then exec $(BIN)/ipledger-demo --bin-dir $(BIN); \
	else echo "make demo: the demo driver (e2e/cmd/ipledger-demo) has not landed yet; nothing runs."; \
	     echo "Built so far: $$(ls $(BIN) 2>/dev/null | tr '\n' ' ')"; exit 1; fi

bench: build ## Run the standard benchmark set (under 10 minutes on 2 cores).
	@if [ -x $(BIN)/ipledger-bench ]; then $(BIN)/ipledger-bench --standard -o markdown; \
	else echo "make bench: ipledger-bench has not landed yet."; exit 1; fi

bench-quick: build ## Run a small benchmark set (under 2 minutes).
	@if [ -x $(BIN)/ipledger-bench ]; then $(BIN)/ipledger-bench --quick -o markdown; \
	else echo "make bench-quick: ipledger-bench has not landed yet."; exit 1; fi

proto: ## Regenerate the Go code for proto/ipledger/v1 (protoc + pinned Go plugins).
	$(PROTOC) -I $(PROTO_DIR) -I /usr/include \
		--plugin=protoc-gen-go=$$($(GO) tool -n protoc-gen-go) \
		--plugin=protoc-gen-go-grpc=$$($(GO) tool -n protoc-gen-go-grpc) \
		--go_out=. --go_opt=module=github.com/ipledger/ipledger \
		--go-grpc_out=. --go-grpc_opt=module=github.com/ipledger/ipledger \
		$(PROTO_FILES)

verify: ## Fail on generated-code or manifest drift, gofmt or go vet findings.
	@.ci/verify

lint: verify ## verify, plus staticcheck (pinned).
	$(GO) run honnef.co/go/tools/cmd/staticcheck@2025.1.1 ./...

clean: ## Remove build output.
	rm -rf $(BIN)

version: ## Print the version make build stamps (and images are tagged with).
	@echo $(VERSION)
