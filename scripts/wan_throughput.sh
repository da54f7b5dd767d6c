#!/usr/bin/env bash
# Time one large message between two `gossip node` processes in two network namespaces joined
# by tests/netns/wire.py with a one-way delay: what a long link does to a single transfer.
#
#   sudo DELAY_MS=50 SIZE=16MiB bash scripts/wan_throughput.sh
#
# CONNECTION='bdp_probe = false' adds lines to both nodes' [connection] section (several:
# CONNECTION=$'bdp_probe = false\nstream_window = "8MiB"').
#
# Prints the sender's `completed` line (elapsed_ms is send to ACK). Needs root, iproute2,
# /dev/net/tun and python3; the wire itself (Python) moves about 40 MiB/s at most here.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --quiet --features cli --bin gossip
G="$CARGO_TARGET_DIR/release/gossip"
DELAY_MS=${DELAY_MS:-50}
SIZE=${SIZE:-16MiB}
P="wan$$"
WORK=$(mktemp -d /tmp/gossip-wan.XXXXXX)
cleanup() {
  set +e
  kill -9 $(jobs -p) 2>/dev/null
  wait 2>/dev/null
  for ns in "$P-a" "$P-b" "$P-hub"; do ip netns del "$ns" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$P-hub"
for br in br0 br1; do
  ip -n "$P-hub" link add "$br" type bridge
  ip -n "$P-hub" link set "$br" up
done
i=1
for n in a b; do
  br=br0
  [ "$n" = b ] && br=br1
  ip netns add "$P-$n"
  ip -n "$P-hub" link add "v$n" type veth peer name eth0 netns "$P-$n"
  ip -n "$P-hub" link set "v$n" master "$br" up
  ip -n "$P-$n" addr add "10.78.0.$i/24" dev eth0
  ip -n "$P-$n" link set eth0 up
  ip -n "$P-$n" link set lo up
  i=$((i + 1))
done
ip -n "$P-hub" tuntap add dev wa mode tap
ip -n "$P-hub" tuntap add dev wb mode tap
ip -n "$P-hub" link set wa master br0 up
ip -n "$P-hub" link set wb master br1 up
echo "delay_ms=$DELAY_MS loss=0 cut=0" >"$WORK/control"
ip netns exec "$P-hub" python3 tests/netns/wire.py wa wb "$WORK/control" >"$WORK/wire.log" 2>&1 &

bytes=$(python3 -c "import re,sys; m=re.fullmatch(r'(\d+)(KiB|MiB|GiB)?', sys.argv[1]); print(int(m[1]) * {None:1,'KiB':1<<10,'MiB':1<<20,'GiB':1<<30}[m[2]])" "$SIZE")
head -c "$bytes" /dev/urandom >"$WORK/payload"
printf '[connection]\n%s\n' "${CONNECTION:-}" >"$WORK/node.toml"
ip netns exec "$P-b" "$G" node --config "$WORK/node.toml" --id b --listen 10.78.0.2:7000 \
  --peer a=10.78.0.1:7000 </dev/zero >"$WORK/b.log" 2>&1 &
# Plain TCP first, the same bytes and one byte back, for what the link itself allows.
cat >"$WORK/tcp.py" <<'PY'
import socket, sys, time
role, path = sys.argv[1], sys.argv[2]
if role == "server":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("10.78.0.2", 7100)); s.listen(1)
    c, _ = s.accept(); n = int(c.recv(16)); got = 0
    while got < n:
        got += len(c.recv(1 << 20))
    c.sendall(b"k")
else:
    data = open(path, "rb").read()
    t = time.monotonic()
    c = socket.create_connection(("10.78.0.2", 7100))
    c.sendall(b"%16d" % len(data)); c.sendall(data); c.recv(1)
    print(f"plain TCP: {len(data)} bytes in {(time.monotonic() - t) * 1e3:.1f} ms (connect included)")
PY
ip netns exec "$P-b" python3 "$WORK/tcp.py" server - &
sleep 0.5
ip netns exec "$P-a" python3 "$WORK/tcp.py" client "$WORK/payload"
echo "one $SIZE message, a -> b, ${DELAY_MS} ms each way:"
(sleep 1; echo "b @$WORK/payload") |
  ip netns exec "$P-a" "$G" node --config "$WORK/node.toml" --id a --listen 10.78.0.1:7000 \
    --peer b=10.78.0.2:7000 --ttl 600s --exit-when-done 2>/dev/null | grep '^completed'
