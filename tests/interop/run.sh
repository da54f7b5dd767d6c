#!/usr/bin/env bash
# The interoperability suite: builds the original Go node and our driver (build.sh), then runs
# tests/suite/interop.rs against them. Where the original cannot be built here (no apt, no seed-go),
# it prints why and skips.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/grpc-gossip-target}"
status=0
driver="$(bash tests/interop/build.sh | tail -1)" || status=$?
if [ "$status" -eq 3 ]; then
    echo "interop: skipped (see above)"
    exit 0
elif [ "$status" -ne 0 ]; then
    exit "$status"
fi
GOSSIP_GO_DRIVER="$driver" cargo test --release --features cli --test suite interop:: -- --nocapture --test-threads 2
