# Strata: `make run` starts a server on ./strata-data with volume vol0;
# `make test` installs the test tools and runs every test.

GO        ?= go
BIN       := bin/strata
DATA      ?= ./strata-data
VOLUME    ?= vol0=10GiB
# Packages with concurrency (and internal/, for its unit tests) run under
# the race detector; cmd/ holds the end-to-end tests.
RACE_PKGS := ./cdp/... ./cow/... ./cache/... ./blockdev/... ./replica/... ./daemon/... ./control/... ./internal/...
VERSITYGW := v1.0.14
STATICCHECK := v0.8.2
TEST_DEBS := fio qemu-utils qemu-system-common libnbd-bin nbdkit python3-libnbd fuse3 e2fsprogs util-linux chromium iproute2 iputils-ping

.PHONY: all build run test test-deps vet staticcheck fmt-check unit race e2e fuzz bench clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/strata

# The web console listens on 127.0.0.1:$(CONSOLE); its login token is in
# $(DATA)/console.token.
CONSOLE   ?= 8080
run: build
	./$(BIN) serve --data $(DATA) --volume $(VOLUME) --console $(CONSOLE)

# Installs what the tests drive (real NBD clients, nbdkit, ext4 tools,
# headless Chromium for the web console's browser tests, and for the
# network-namespace drills iproute2, ping and qemu-storage-daemon, QEMU's
# reconnecting NBD client).
# Needs root (or sudo) and Debian/Ubuntu; skips the install when all
# tools are already there.
test-deps:
	@if command -v fio >/dev/null && command -v qemu-io >/dev/null && command -v nbdinfo >/dev/null && \
	    command -v nbdkit >/dev/null && command -v nbdfuse >/dev/null && command -v chromium >/dev/null && \
	    command -v qemu-storage-daemon >/dev/null && command -v ip >/dev/null && command -v ping >/dev/null && \
	    /usr/bin/python3 -c 'import nbd' 2>/dev/null; then \
		echo "test tools present"; \
	else \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $(TEST_DEBS); \
	fi
	@# A real S3 server for the S3 replication tests (about 3 minutes to build).
	@if [ -x "$$($(GO) env GOPATH)/bin/versitygw" ]; then echo "versitygw present"; else \
		$(GO) install github.com/versity/versitygw/cmd/versitygw@$(VERSITYGW); fi

vet:
	$(GO) vet ./...

# staticcheck (honnef.co/go/tools), installed when absent; keep it at zero findings.
staticcheck:
	@if [ -x "$$($(GO) env GOPATH)/bin/staticcheck" ]; then echo "staticcheck present"; else \
		$(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK); fi
	"$$($(GO) env GOPATH)/bin/staticcheck" ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

race:
	$(GO) test -race -count=1 -timeout 15m $(RACE_PKGS)

e2e: build
	$(GO) test -count=1 -timeout 15m ./cmd/...

# Short runs of each fuzz target (the corpus in testdata/ always runs in `race`).
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDecodeRecord -fuzztime 20s ./cdp
	$(GO) test -run '^$$' -fuzz FuzzRequest -fuzztime 20s ./blockdev/nbd
	$(GO) test -run '^$$' -fuzz FuzzReadReply -fuzztime 20s ./internal/qga
	$(GO) test -run '^$$' -fuzz FuzzSplitCommand -fuzztime 10s ./control
	$(GO) test -run '^$$' -fuzz FuzzParseKeep -fuzztime 10s ./control

test: test-deps vet staticcheck fmt-check race e2e

# Strata against nbdkit, qemu-nbd and the io_uring ceiling, side by side
# (bench/README.md): about 40 minutes; `make bench BENCH_FLAGS=-quick` is a
# 10-minute smoke run. Table, CSV and chart in bench/results/.
BENCH_FLAGS ?=
bench: build test-deps
	$(GO) run ./bench/runner -strata $(BIN) $(BENCH_FLAGS)

clean:
	rm -rf bin
