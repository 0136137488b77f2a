#!/usr/bin/env bash
# Builds the action runtime images locally (no registry is reachable), named as in OpenWhisk's
# runtimes manifest, and rebuilds one only when its inputs change (an image label holds the
# hash of its inputs):
#
#   openwhisk/dockerskeleton:nightly       native/blackbox actions: FROM scratch + static proxy
#   openwhisk/action-nodejs-v18:nightly    Debian 12 nodejs (18) + proxy + launcher.js
#   openwhisk/action-python-v3.11:nightly  Debian 12 python3 (3.11) + proxy + launcher.py
#   whisk-pcpm/pause:latest                pcpm's pause container: FROM scratch + pcpm-pause
#   $WHISK_TOOLS_DIR/vm/wasm-unikernel     the WebAssembly unikernel for wasm:0.1 actions (unikernel/)
#
# The three runtime images are also saved (`docker save`) into the image store the invoker's
# netns mode reads without dockerd ($WHISK_IMAGE_STORE, default /var/lib/wsk-invoker/image-store,
# the invoker's default `whisk.invoker.runc.image-store`), once per image id.
#
# The Debian root filesystems come from debootstrap (bookworm, minbase) and are cached as
# tarballs under $WHISK_TOOLS_DIR/rootfs, keyed by suite and package list; the package versions
# that went in are recorded in the image (/etc/whisk-packages).
# Usage: runtimes/build.sh [--force]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${WHISK_TOOLS_DIR:=/opt/whisk-tools}"
: "${WHISK_DEBIAN_MIRROR:=http://deb.debian.org/debian}"
SUITE=bookworm
FORCE=${1:-}
log() { printf '[runtimes] %s\n' "$*" >&2; }

command -v debootstrap >/dev/null || {
    log "installing debootstrap (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}

# 1. The proxy and pcpm's pause process, statically linked so that they run in any image,
#    FROM scratch included.
log "building the static action proxy and pause binary"
RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=true \
    cargo build --quiet --release --locked -p action-proxy -p pcpm --bin action-proxy --bin pcpm-pause \
    --target x86_64-unknown-linux-gnu --target-dir target/static
PROXY=target/static/x86_64-unknown-linux-gnu/release/action-proxy
PAUSE=target/static/x86_64-unknown-linux-gnu/release/pcpm-pause
for bin in "$PROXY" "$PAUSE"; do
    if ldd "$bin" 2>&1 | grep -q '=>'; then
        log "error: $bin is not statically linked"
        exit 1
    fi
done

hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# Builds image $1 from context dir $2 unless an image with input hash $3 exists.
build_image() {
    local image=$1 ctx=$2 hash=$3 have started old
    have=$(docker image inspect --format '{{ index .Config.Labels "whisk.inputs" }}' "$image" 2>/dev/null || true)
    if [ "$have" = "$hash" ] && [ "$FORCE" != --force ]; then
        log "$image is up to date ($hash)"
        return 0
    fi
    started=$SECONDS
    old=$(docker image inspect --format '{{ .Id }}' "$image" 2>/dev/null || true)
    docker build -q --label "whisk.inputs=$hash" -t "$image" "$ctx" >/dev/null 2>"$ctx/build.log" ||
        { cat "$ctx/build.log" >&2; log "error: docker build of $image failed"; exit 1; }
    # The image it replaces would linger untagged; remove it unless a container still uses it.
    if [ -n "$old" ] && [ "$old" != "$(docker image inspect --format '{{ .Id }}' "$image")" ]; then
        docker rmi "$old" >/dev/null 2>&1 || true
    fi
    log "$image built in $((SECONDS - started)) s ($(docker image inspect --format '{{ .Size }}' "$image" | awk '{printf "%.1f MB", $1/1e6}'))"
}

# A Debian root filesystem with $2 installed, as a cached tarball; prints its path.
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

# Imports rootfs tarball $2 as base image $1 (once per tarball).
base_image() {
    local image=$1 tarball=$2
    if ! docker image inspect "$image" >/dev/null 2>&1; then
        docker import "$tarball" "$image" >/dev/null
    fi
}

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT

# 2. Native (blackbox) actions: the proxy alone, FROM scratch.
mkdir -p "$ctx/native/action"
cp "$PROXY" "$ctx/native/action-proxy"
cat >"$ctx/native/Dockerfile" <<'EOF'
FROM scratch
COPY action-proxy /bin/action-proxy
COPY action /action
ENV OW_ACTION_DIR=/action OW_SOURCE_FILE=exec
EXPOSE 8080
ENTRYPOINT ["/bin/action-proxy"]
EOF
build_image openwhisk/dockerskeleton:nightly "$ctx/native" "$(hash_of "$PROXY" "$ctx/native/Dockerfile")"

# 2b. pcpm's pause container: the pause process alone, FROM scratch.
mkdir -p "$ctx/pause"
cp "$PAUSE" "$ctx/pause/pause"
cat >"$ctx/pause/Dockerfile" <<'EOF'
FROM scratch
COPY pause /pause
ENTRYPOINT ["/pause"]
EOF
build_image whisk-pcpm/pause:latest "$ctx/pause" "$(hash_of "$PAUSE" "$ctx/pause/Dockerfile")"

# 3. Node.js 18 and Python 3.11 from Debian 12.
lang_image() { # image base-name packages launcher source-file launcher-command
    local image=$1 base=$2 packages=$3 launcher=$4 source=$5 command=$6 tarball key
    tarball=$(rootfs "$base" "$packages")
    key=$(basename "$tarball" .tar)
    base_image "whisk-rootfs/$key" "$tarball"
    mkdir -p "$ctx/$base/action"
    cp "$PROXY" "$ctx/$base/action-proxy"
    cp "runtimes/launchers/$launcher" "$ctx/$base/$launcher"
    cat >"$ctx/$base/Dockerfile" <<EOF
FROM whisk-rootfs/$key
COPY action-proxy /bin/action-proxy
COPY $launcher /launcher/$launcher
COPY action /action
ENV OW_ACTION_DIR=/action OW_SOURCE_FILE=$source OW_LAUNCHER="$command"
EXPOSE 8080
ENTRYPOINT ["/bin/action-proxy"]
EOF
    build_image "$image" "$ctx/$base" "$(hash_of "$PROXY" "runtimes/launchers/$launcher" "$ctx/$base/Dockerfile")"
}
lang_image openwhisk/action-nodejs-v18:nightly nodejs18 nodejs launcher.js index.js "node /launcher/launcher.js"
lang_image openwhisk/action-python-v3.11:nightly python311 python3 launcher.py __main__.py "python3 /launcher/launcher.py"

# 4. The image store of the OCI-runtime backend: one `docker save` archive per runtime image,
#    named as invoker::container::image_store::archive_name names it, rewritten only when the
#    image id changes.
: "${WHISK_IMAGE_STORE:=/var/lib/wsk-invoker/image-store}"
mkdir -p "$WHISK_IMAGE_STORE"
for image in openwhisk/dockerskeleton:nightly openwhisk/action-nodejs-v18:nightly \
    openwhisk/action-python-v3.11:nightly; do
    file=$WHISK_IMAGE_STORE/$(printf '%s' "$image" | tr '/:@' '___').tar
    id=$(docker image inspect --format '{{ .Id }}' "$image")
    if [ "$(cat "$file.id" 2>/dev/null)" != "$id" ] || [ ! -f "$file" ]; then
        docker save -o "$file.tmp" "$image"
        mv "$file.tmp" "$file"
        echo "$id" >"$file.id"
        log "$image saved to the image store ($(du -h "$file" | cut -f1))"
    fi
done

# 5. The Linux microVM guest (runtimes/vm/README.md): kernel, initramfs and a read-only root
#    image per kind under $WHISK_TOOLS_DIR/vm, from the same proxy and root filesystems as the
#    images above; each file is rebuilt only when its inputs change.
runtimes/vm/build-guest.sh --proxy "$PROXY" \
    --rootfs nodejs18="$(rootfs nodejs18 nodejs)" --rootfs python311="$(rootfs python311 python3)" \
    ${FORCE:+"$FORCE"}

# 6. The WebAssembly unikernel that runs every wasm:0.1 action (unikernel/): one ELF for all
#    functions, booted by QEMU -M microvm. Its own cargo workspace (a no_std kernel with its own
#    linker script and profile); installed beside the Linux guest when it changed.
log "building the WebAssembly unikernel"
cargo build --quiet --release --locked --manifest-path unikernel/Cargo.toml -p wasm-unikernel
UNIKERNEL=unikernel/target/release/wasm-unikernel
mkdir -p "$WHISK_TOOLS_DIR/vm"
if ! cmp -s "$UNIKERNEL" "$WHISK_TOOLS_DIR/vm/wasm-unikernel"; then
    install -m 0644 "$UNIKERNEL" "$WHISK_TOOLS_DIR/vm/wasm-unikernel.tmp"
    mv "$WHISK_TOOLS_DIR/vm/wasm-unikernel.tmp" "$WHISK_TOOLS_DIR/vm/wasm-unikernel"
    log "unikernel installed: $WHISK_TOOLS_DIR/vm/wasm-unikernel ($(du -h "$UNIKERNEL" | cut -f1))"
fi
