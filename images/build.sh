#!/usr/bin/env bash
# Builds the images the deployments in openwhisk-conf/ run, locally (no registry is reachable),
# the way runtimes/build.sh builds the action runtimes: each image carries the hash of its
# inputs in the label `whisk.inputs` and is rebuilt only when they change.
#
#   whisk/invoker:latest            the invoker, under the name apache/openwhisk's ansible
#                                   deploys ({{docker.image.prefix}}/invoker:{{docker.image.tag}})
#   openwhisk/invoker:$TAG          the same image, under the name helm (invoker.imageName/Tag)
#                                   and openwhisk-devtools' compose (DOCKER_IMAGE_PREFIX/TAG) use
#   whisk/standalone:latest         the front door (standalone), for the self-contained compose file
#   whisk/tansu:0.6.0               the Kafka-API broker tansu 0.6.0
#   whisk/pouchdb-server:4.2.0      the CouchDB-API server pouchdb-server 4.2.0
#
# The invoker and the front door are statically linked (glibc with crt-static; rdkafka's bundled
# librdkafka builds and links statically, see images/README.md). The invoker image is still
# Debian 12 minbase rather than FROM scratch, because its pool modes run host tools inside the
# container: runc (netns mode), ip (the VM backend's neighbour entries), iptables (netpool's
# FORWARD rule) and qemu-system-x86_64 (the VM backend, which every wasm:0.1 action needs);
# bash and sh for /init.sh come with it.
# The broker and pouchdb-server are dynamically linked (tansu) or need node (pouchdb-server), so
# they sit on the Debian 12 nodejs root filesystem runtimes/build.sh already made.
#
# Usage: images/build.sh [--force]
#   TAG (default: latest)  the tag of openwhisk/invoker
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${WHISK_TOOLS_DIR:=/opt/whisk-tools}"
: "${WHISK_DEBIAN_MIRROR:=http://deb.debian.org/debian}"
: "${TAG:=latest}"
SUITE=bookworm
FORCE=${1:-}
# The static builds' own target folder (shared with runtimes/build.sh's static binaries).
: "${WHISK_STATIC_TARGET_DIR:=target/static}"
TANSU_DIR=$WHISK_TOOLS_DIR/tansu-0.6.0
POUCHDB_DIR=$WHISK_TOOLS_DIR/pouchdb-server-4.2.0
# The packages of the invoker's base: what its pool modes execute (see above; iptables for
# the FORWARD rule netpool adds on hosts whose bridged frames go through iptables).
INVOKER_PACKAGES=runc,iproute2,iptables,qemu-system-x86
log() { printf '[images] %s\n' "$*" >&2; }

command -v debootstrap >/dev/null || {
    log "installing debootstrap (apt)"
    DEBIAN_FRONTEND=noninteractive flock /tmp/apt.lock apt-get install -y -qq debootstrap >/dev/null
}
for dir in "$TANSU_DIR" "$POUCHDB_DIR"; do
    [ -d "$dir" ] || { log "error: $dir is missing; scripts/stack.sh up installs it"; exit 1; }
done

# 1. The invoker and the front door, statically linked (same flags as runtimes/build.sh uses for
#    the action proxy), in their own target folder so they do not disturb the dynamic builds.
log "building the static invoker and front door"
RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=true \
    cargo build --quiet --release --locked -p invoker -p standalone --bin invoker --bin standalone \
    --target x86_64-unknown-linux-gnu --target-dir "$WHISK_STATIC_TARGET_DIR"
BIN=$WHISK_STATIC_TARGET_DIR/x86_64-unknown-linux-gnu/release
for bin in "$BIN/invoker" "$BIN/standalone"; do
    if ldd "$bin" 2>&1 | grep -q '=>'; then
        log "error: $bin is not statically linked"
        exit 1
    fi
done

hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# Builds image $1 from context dir $2 unless an image with input hash $3 exists; extra tags $4...
build_image() {
    local image=$1 ctx=$2 hash=$3 have started old
    shift 3
    have=$(docker image inspect --format '{{ index .Config.Labels "whisk.inputs" }}' "$image" 2>/dev/null || true)
    if [ "$have" = "$hash" ] && [ "$FORCE" != --force ]; then
        log "$image is up to date ($hash)"
    else
        started=$SECONDS
        old=$(docker image inspect --format '{{ .Id }}' "$image" 2>/dev/null || true)
        docker build -q --label "whisk.inputs=$hash" -t "$image" "$ctx" >/dev/null 2>"$ctx/build.log" ||
            { cat "$ctx/build.log" >&2; log "error: docker build of $image failed"; exit 1; }
        log "$image built in $((SECONDS - started)) s ($(docker image inspect --format '{{ .Size }}' "$image" | awk '{printf "%.1f MB", $1/1e6}'))"
        for tag in "$@"; do docker tag "$image" "$tag"; done
        # The image it replaces would linger untagged; remove it unless a container still uses it.
        if [ -n "$old" ] && [ "$old" != "$(docker image inspect --format '{{ .Id }}' "$image")" ]; then
            docker rmi "$old" >/dev/null 2>&1 || true
        fi
    fi
    for tag in "$@"; do
        [ "$(docker image inspect --format '{{ .Id }}' "$tag" 2>/dev/null)" = "$(docker image inspect --format '{{ .Id }}' "$image")" ] ||
            { docker tag "$image" "$tag"; log "tagged $tag"; }
    done
}

# A Debian root filesystem with $2 installed, as a cached tarball; prints its path. Same layout
# and key as runtimes/build.sh, so both scripts share the cache.
rootfs() {
    local name=$1 packages=$2 key tarball dir started
    key=$(echo "$SUITE $packages" | sha256sum | cut -c1-16)
    tarball=$WHISK_TOOLS_DIR/rootfs/$name-$key.tar
    if [ ! -f "$tarball" ]; then
        started=$SECONDS
        log "debootstrap $SUITE + $packages (first time only)"
        dir=$(mktemp -d)
        debootstrap --variant=minbase --include="$packages" "$SUITE" "$dir" "$WHISK_DEBIAN_MIRROR" >"$dir.log" 2>&1 ||
            { log "error: debootstrap failed, see $dir.log"; exit 1; }
        chroot "$dir" dpkg-query -W -f '${Package} ${Version}\n' >"$dir/etc/whisk-packages"
        rm -rf "$dir"/var/cache/apt/* "$dir"/var/lib/apt/lists/* "$dir"/usr/share/doc/* \
            "$dir"/usr/share/man/* "$dir"/usr/share/info/* "$dir"/usr/share/locale/*
        mkdir -p "$(dirname "$tarball")"
        tar --numeric-owner -C "$dir" -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        rm -rf "$dir" "$dir.log"
        log "rootfs $name ready in $((SECONDS - started)) s"
    fi
    echo "$tarball"
}

# Imports rootfs tarball $1 as a base image (once per tarball); prints the image's name.
base_image() {
    local tarball=$1 image
    image=whisk-rootfs/$(basename "$tarball" .tar)
    docker image inspect "$image" >/dev/null 2>&1 || docker import "$tarball" "$image" >/dev/null
    echo "$image"
}

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT

# 2. The invoker.
invoker_base=$(base_image "$(rootfs invoker "$INVOKER_PACKAGES")")
mkdir -p "$ctx/invoker"
cp "$BIN/invoker" images/invoker/init.sh "$ctx/invoker/"
sed "s|@BASE@|$invoker_base|" images/invoker/Dockerfile >"$ctx/invoker/Dockerfile"
build_image whisk/invoker:latest "$ctx/invoker" \
    "$(hash_of "$BIN/invoker" images/invoker/init.sh "$ctx/invoker/Dockerfile")" "openwhisk/invoker:$TAG"

# 3. The front door: FROM scratch, it needs nothing but its static binary.
mkdir -p "$ctx/standalone"
cp "$BIN/standalone" images/standalone/Dockerfile "$ctx/standalone/"
build_image whisk/standalone:latest "$ctx/standalone" \
    "$(hash_of "$BIN/standalone" images/standalone/Dockerfile)"

# 4. The broker and the CouchDB-API server, on the nodejs root filesystem of runtimes/build.sh.
node_base=$(base_image "$(rootfs nodejs18 nodejs)")
mkdir -p "$ctx/tansu"
cp "$TANSU_DIR/bin/tansu" "$ctx/tansu/"
sed "s|@BASE@|$node_base|" images/tansu/Dockerfile >"$ctx/tansu/Dockerfile"
build_image whisk/tansu:0.6.0 "$ctx/tansu" "$(hash_of "$TANSU_DIR/bin/tansu" "$ctx/tansu/Dockerfile")"

mkdir -p "$ctx/pouchdb"
tar -C "$POUCHDB_DIR" -cf "$ctx/pouchdb/pouchdb-server.tar" node_modules package.json
cp images/pouchdb/start.sh "$ctx/pouchdb/"
sed "s|@BASE@|$node_base|" images/pouchdb/Dockerfile >"$ctx/pouchdb/Dockerfile"
build_image whisk/pouchdb-server:4.2.0 "$ctx/pouchdb" \
    "$(hash_of "$POUCHDB_DIR/package-lock.json" images/pouchdb/start.sh "$ctx/pouchdb/Dockerfile")"
