# L4Drop. `make demo` and `make test` set up everything they need on a fresh
# Debian machine (root), then build and run.

SHELL := /bin/bash
export PATH := $(PATH):/usr/local/go/bin
GO ?= go

# Debian packages: clang builds L4Drop's XDP programs, libpcap-dev compiles
# tcpdump expressions (cgo), libbpf-dev has the headers xdpcap's example C
# program includes, tcpdump and iproute2 are used by tests and the lab,
# iptables and xdp-tools are the peers `make bench` measures against.
# tshark decodes pcapng verdicts and sFlow; pmacct (sfacctd) and fastnetmon are the
# sFlow collectors the interop tests feed.
DEB_PACKAGES := clang llvm libpcap-dev libbpf-dev tcpdump iproute2 iptables xdp-tools bpftool gnuplot-nox \
	tshark pmacct fastnetmon
# The command (or file) whose absence tells that a package is missing.
DEB_PROBES := tshark:tshark sfacctd:pmacct fastnetmon:fastnetmon clang:clang llvm-objdump:llvm /usr/include/pcap/pcap.h:libpcap-dev \
	/usr/include/bpf/bpf_helpers.h:libbpf-dev tcpdump:tcpdump \
	ip:iproute2 iptables:iptables xdp-filter:xdp-tools bpftool:bpftool gnuplot:gnuplot-nox

# staticcheck, pinned: the newest release that builds with the module's Go.
# `make deps` installs it with `go install` into GOPATH/bin.
STATICCHECK_VERSION := v0.8.2
GOBIN_DIR = $(shell $(GO) env GOPATH)/bin
STATICCHECK = $(GOBIN_DIR)/staticcheck
# goflow2, the collector docs/sflow.md configures; the sFlow interop tests run it.
# The same version as the decoder in go.mod.
GOFLOW2_VERSION := v2.2.6

TEST_TIMEOUT ?= 14m
FUZZTIME ?= 15s

.PHONY: all deps build test vet fuzz demo bench clean help

all: build

help:
	@echo "make demo   set up, build, and mitigate a flood in a self-made lab (needs root)"
	@echo "make test   set up and run every test (needs root for the kernel tests)"
	@echo "make bench  measure cbpfc, L4Drop and xdpcap against their peers; writes docs/benchmarks.md"
	@echo "make build  build the commands into bin/"
	@echo "make vet   go mod tidy -diff, gofmt, go vet and staticcheck"

# deps installs only what is missing, so it costs nothing on a ready machine.
deps:
	@missing=(); for p in $(DEB_PROBES); do probe=$${p%%:*}; pkg=$${p##*:}; \
		if [[ $$probe == /* ]]; then [[ -e $$probe ]] || missing+=($$pkg); \
		else command -v $$probe >/dev/null || missing+=($$pkg); fi; done; \
	if (( $${#missing[@]} )); then \
		echo "installing Debian packages: $${missing[*]}"; \
		[[ $$(id -u) == 0 ]] || { echo "need root to install: $${missing[*]}" >&2; exit 1; }; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $${missing[*]} >/dev/null; \
		systemctl disable --now fastnetmon >/dev/null 2>&1 || true; \
	fi
	@command -v $(GO) >/dev/null || { echo "Go toolchain not found (expected at /usr/local/go/bin)" >&2; exit 1; }
	@$(GO) mod download
	@if ! $(STATICCHECK) -version 2>/dev/null | grep -qF "($(STATICCHECK_VERSION:v%=%))"; then \
		echo "installing staticcheck $(STATICCHECK_VERSION)"; \
		GOBIN=$(GOBIN_DIR) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION); \
	fi
	@if [[ ! -x $(GOBIN_DIR)/goflow2 ]]; then \
		echo "installing goflow2 $(GOFLOW2_VERSION)"; \
		GOBIN=$(GOBIN_DIR) $(GO) install github.com/netsampler/goflow2/v2/cmd/goflow2@$(GOFLOW2_VERSION); \
	fi

build: deps
	@mkdir -p bin
	$(GO) build -o bin/ ./cmd/...

# vet fails on an untidy go.mod, unformatted code, go vet or staticcheck.
vet: deps
	$(GO) mod tidy -diff
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
		if [[ -n $$unformatted ]]; then echo "gofmt needed: $$unformatted" >&2; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...

test: vet
	$(GO) test -timeout $(TEST_TIMEOUT) -count=1 ./...
	@$(MAKE) --no-print-directory fuzz

# Short fuzz runs; the seeds that once found bugs run in every `go test`.
# One package per `go test -fuzz` run, one target each (.ci/fuzz: it
# repeats, up to four times, a run that only met Go's fuzzing deadline race).
fuzz:
	GO=$(GO) .ci/fuzz FuzzParse ./cbpf $(FUZZTIME)
	GO=$(GO) .ci/fuzz FuzzInterpret ./cbpf $(FUZZTIME)
	GO=$(GO) .ci/fuzz FuzzCompile ./cbpfc $(FUZZTIME)
	GO=$(GO) .ci/fuzz FuzzEBPF ./cbpfc $(FUZZTIME)
	GO=$(GO) .ci/fuzz FuzzC ./cbpfc $(FUZZTIME)
	GO=$(GO) .ci/fuzz FuzzTests ./cbpfc $(FUZZTIME)
	GO=$(GO) .ci/fuzz FuzzTails ./cbpfc $(FUZZTIME)
	GO=$(GO) .ci/fuzz FuzzRoundTrip ./sflow $(FUZZTIME)
	GO=$(GO) .ci/fuzz FuzzDecode ./sflow $(FUZZTIME)
	GO=$(GO) .ci/fuzz FuzzFingerprint ./fingerprint $(FUZZTIME)
	GO=$(GO) .ci/fuzz FuzzEngine ./fingerprint $(FUZZTIME)
	GO=$(GO) .ci/fuzz FuzzRuleSet ./l4drop/build $(FUZZTIME)
	GO=$(GO) .ci/fuzz FuzzReader ./internal/pcapfile $(FUZZTIME)
	GO=$(GO) .ci/fuzz FuzzGenerate ./bpfgen $(FUZZTIME)
	GO=$(GO) .ci/fuzz FuzzDNS ./bpfgen $(FUZZTIME)

demo: build
	./bin/l4lab demo

bench: build
	./bin/l4lab bench

clean:
	rm -rf bin
