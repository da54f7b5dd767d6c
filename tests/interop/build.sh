#!/usr/bin/env bash
# Builds the original Go node for the interoperability tests: the packages of
# ../shared/seed-go (see its ORIGIN.md) with the two build fixes it lists (protobuf code
# regenerated with Debian's plugins; grpc.WithInsecure for the newer credentials API), plus our
# driver (tests/interop/driver). Installs Debian's Go and grpc-go when they are missing.
# Prints the driver's path on its last line; exits 3 (with the reason) where it cannot build.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
seed="${GOSSIP_SEED_GO:-$root/../shared/seed-go}"
cache="${GOSSIP_GO_CACHE:-$HOME/.cache/grpc-gossip-go}"

if [ ! -d "$seed/NodeManage" ]; then
    echo "interop: no original Go system at $seed (set GOSSIP_SEED_GO)" >&2
    exit 3
fi

packages=(golang golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev
    golang-google-protobuf-dev protobuf-compiler protoc-gen-go protoc-gen-go-grpc)
if ! command -v go >/dev/null || ! command -v protoc-gen-go-grpc >/dev/null \
    || [ ! -d /usr/share/gocode/src/google.golang.org/grpc ]; then
    if ! command -v apt-get >/dev/null; then
        echo "interop: no apt-get here to install Go and grpc-go: ${packages[*]}" >&2
        exit 3
    fi
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "interop: installing ${packages[*]}" >&2
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
fi

# GOPATH mode: no module proxy is reachable; everything comes from Debian's packages.
gopath="$cache/gopath"
src="$gopath/src/github.com/sukasukasuka123/Gossip"
rm -rf "$src" "$gopath/src/grpc-gossip-interop"
mkdir -p "$src" "$gopath/src/grpc-gossip-interop" "$cache/bin"
cp -r "$seed"/. "$src"/
rm -f "$src"/gossip_rpc/proto/*.pb.go
protoc -I "$src/proto" -I /usr/include \
    --go_out="$src/gossip_rpc/proto" --go_opt=paths=source_relative \
    --go-grpc_out="$src/gossip_rpc/proto" --go-grpc_opt=paths=source_relative \
    "$src/proto/gossip_rpc.proto"
sed -i 's/grpc.WithTransportCredentials(insecure.NewCredentials())/grpc.WithInsecure()/; /credentials\/insecure"/d' \
    "$src/GossipStreamFactory/GossipDoubleChanFactory.go"
cp -r "$here/driver" "$gopath/src/grpc-gossip-interop/"

export GO111MODULE=off GOPATH="$gopath:/usr/share/gocode"
export GOCACHE="$cache/go-build"
go build -o "$cache/bin/gossip-go-driver" grpc-gossip-interop/driver
echo "$cache/bin/gossip-go-driver"
