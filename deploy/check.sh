#!/usr/bin/env bash
# Checks what deploy/ ships without pulling a base image: the systemd unit passes
# `systemd-analyze verify`, and the container's entry command, run as written (in a network
# namespace of its own, so its fixed ports collide with nothing), answers 200 on /readyz and
# stops cleanly on SIGTERM. Prints why it skips a part it cannot run here.
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)
bin="${CARGO_TARGET_DIR:-$here/../target}/release/gossip"
[ -x "$bin" ] || { echo "deploy: $bin missing; build it first (cargo build --release --features cli)" >&2; exit 1; }
work=$(mktemp -d)
ns="gossip-deploy-$$"
cleanup() { ip netns del "$ns" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# The files as installed: the image's COPY lines and the unit's paths, pointed at this tree.
map_paths() { sed -e "s#/usr/local/bin/gossip#$bin#g" -e "s#/etc/gossip/node.toml#$here/node.toml#g"; }

if command -v systemd-analyze >/dev/null 2>&1; then
  map_paths < gossip.service > "$work/gossip.service"
  systemd-analyze verify "$work/gossip.service"
  echo "deploy: gossip.service verified"
else
  echo "deploy: skip unit check: no systemd-analyze here"
fi

entry=$(python3 - <<'PY'
import json, re
text = open("Containerfile").read()
m = re.search(r'^ENTRYPOINT\s+(\[.*\])\s*$', text, re.M)
print(" ".join(json.loads(m.group(1))))
PY
)
entry=$(echo "$entry" | map_paths)
if [ "$(id -u)" -ne 0 ] || ! ip netns add "$ns" 2>/dev/null; then
  echo "deploy: skip entry command check: network namespaces need root"
  exit 0
fi
ip -n "$ns" link set lo up
echo "deploy: running the image's entry command: $entry"
# No stdin, as in a container: the node serves until stopped.
ip netns exec "$ns" $entry < /dev/null > "$work/out" 2> "$work/err" &
pid=$!
code=""
for _ in $(seq 1 100); do
  code=$(ip netns exec "$ns" python3 - <<'PY' 2>/dev/null || true
import urllib.request, urllib.error
try:
    print(urllib.request.urlopen("http://127.0.0.1:9101/readyz", timeout=1).status)
except urllib.error.HTTPError as e:
    print(e.code)
PY
)
  [ "$code" = 200 ] && break
  sleep 0.1
done
kill -TERM "$pid"
status=0; wait "$pid" || status=$?
if [ "$code" != 200 ]; then
  echo "deploy: /readyz answered ${code:-nothing}" >&2; cat "$work/out" "$work/err" >&2; exit 1
fi
[ "$status" -eq 0 ] || { echo "deploy: node exited $status after SIGTERM" >&2; cat "$work/err" >&2; exit 1; }
grep -q "^[0-9T:.-]*Z listening id=gossip-1" "$work/out" || { echo "deploy: no timestamped listening line" >&2; cat "$work/out" >&2; exit 1; }
echo "deploy: entry command answered 200 on /readyz and stopped cleanly"
