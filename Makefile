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
	$(CARGO) run --release --bin gossip -- bench $(BENCH_ARGS)

test: setup
	$(CARGO) test --release

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings

ci:
	bash .ci/run
