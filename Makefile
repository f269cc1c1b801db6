# blockimage's build and test entry points. `sudo make test` is what CI runs.

GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
export PATH := $(dir $(GO)):$(PATH)


# Integration tests run packages in parallel; each owns its own loop devices,
# servers and guests. The timeout is a backstop, far above a normal run.
TEST_TIMEOUT ?= 30m

.PHONY: test setup check unit fuzz

## test: install what the tests need, check formatting and builds, fuzz every
## parser briefly, then run every test (last, so its summary ends the output).
test: setup check fuzz
	$(GO) test -timeout $(TEST_TIMEOUT) ./...

## fuzz: every fuzz target for FUZZTIME (default 10s) each.
fuzz:
	GO=$(GO) scripts/fuzz-short

## setup: install Debian packages and start libvirtd (idempotent, needs root).
setup:
	scripts/setup

## check: gofmt, go vet, and the cgo-free build (cgo users fall back to
## stubs that report themselves unavailable).
check:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	CGO_ENABLED=0 $(GO) build ./...

## unit: the tests that need no root and no services (integration tests skip).
unit:
	CI= $(GO) test ./...
