# Two commands do everything on a fresh machine with only the Rust toolchain:
#   make bench   the seed benchmark (4 nodes, 360 x 512 KiB per round) against plain TCP
#   make test    the whole test suite
# Both install cmake (and the other build needs) first when missing. Everything builds in the
# release profile, so gRPC's C core (about 7 minutes) is compiled once for all of them.

CARGO ?= cargo
BENCH_ARGS ?= --baseline tcp --rounds 20

.PHONY: setup bench test lint ci

setup:
	@scripts/setup.sh

bench: setup
	$(CARGO) run --release --features cli --bin gossip -- bench $(BENCH_ARGS)

# The library alone (no default features), then everything with the binary.
test: setup
	$(CARGO) build --release --lib --no-default-features
	$(CARGO) test --release --features cli

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets --features cli -- -D warnings

ci:
	bash .ci/run
