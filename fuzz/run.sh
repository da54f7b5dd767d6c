#!/usr/bin/env bash
# Coverage-guided fuzzing of the protocol core (see README.md here).
#
#   fuzz/run.sh [SECONDS]             fuzz from the committed corpus (default 60 s);
#                                     exits 1 if any input crashed
#   fuzz/run.sh SECONDS --minimize    then replace the committed corpus with the
#                                     smallest set of inputs that covers the same paths
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
minimize="${2:-}"

# Its own build directory: cargo afl builds with instrumentation flags, and gRPC's C core
# takes minutes, so it is kept across runs.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/grpc-gossip-fuzz-target}"
export CARGO_TERM_COLOR=never
if ! cargo afl --version >/dev/null 2>&1; then
    echo "installing cargo-afl (builds AFL++ once)"
    cargo install cargo-afl --version 0.18.2 --locked
fi
cargo afl build --release --bins
target="$CARGO_TARGET_DIR/release/received"

if [ -z "$(ls corpus/received 2>/dev/null)" ]; then
    "$CARGO_TARGET_DIR/release/seeds" corpus/received
fi

out="$(mktemp -d /tmp/grpc-gossip-fuzz.XXXXXX)"
# No TTY in CI; no CPU frequency governor or core dump helper to care about in a container.
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_AFFINITY=1
cargo afl fuzz -V "$seconds" -i corpus/received -o "$out" "$target" >"$out/log" 2>&1 || {
    tail -30 "$out/log"
    exit 1
}
stats="$out/default/fuzzer_stats"
for key in run_time execs_done execs_per_sec corpus_count bitmap_cvg saved_crashes saved_hangs; do
    grep -E "^$key " "$stats" || true
done

crashes=$(find "$out/default/crashes" -type f ! -name README.txt | wc -l)
if [ "$crashes" -gt 0 ]; then
    echo "fuzz: $crashes crashing input(s) in $out/default/crashes; replay one with"
    echo "  $target < FILE"
    exit 1
fi

if [ "$minimize" = "--minimize" ]; then
    rm -rf "$out/min"
    # AFL++'s shell afl-cmin (its Python one finds no tuples on this machine).
    bin="$(ls -d "$HOME"/.local/share/afl.rs/*/afl.rs-*/afl/bin | tail -1)"
    PATH="$bin:$PATH" "$bin/afl-cmin.bash" -i "$out/default/queue" -o "$out/min" -- "$target" \
        >"$out/cmin.log" 2>&1
    # Inputs that once crashed stay, as regression tests, beside the minimal set.
    find corpus/received -type f ! -name 'crash-*' -delete
    n=0
    for f in "$out"/min/*; do
        cp "$f" "corpus/received/$(sha1sum "$f" | cut -c1-16)"
        n=$((n + 1))
    done
    echo "corpus: $n inputs"
fi
rm -rf "$out"
