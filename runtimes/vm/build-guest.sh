#!/usr/bin/env bash
# Builds the Linux microVM guest (runtimes/vm/README.md) under $WHISK_TOOLS_DIR/vm:
#
#   vmlinux               Debian's cloud kernel (the ABI package linux-image-cloud-amd64 depends on),
#                         uncompressed: an ELF with a PVH entry, which QEMU boots directly
#   vmlinuz               the same kernel as packaged (bzImage), for VMMs without PVH boot
#   initrd.img            newc cpio: the static guest-init as /init + the virtio/overlay modules
#   root-native.ext4      read-only root of native (blackbox) actions: the static proxy alone
#   root-nodejs18.ext4    Debian 12 minbase + nodejs + proxy + launcher.js
#   root-python311.ext4   Debian 12 minbase + python3 + proxy + launcher.py
#   kernel.txt            the kernel package and version that went in
#
# Each file is rebuilt only when its inputs change (a .inputs stamp next to it holds their
# hash; this script is an input of each) and replaced atomically, so a VM that is running keeps
# the file it opened. The root filesystems are runtimes/build.sh's debootstrap tarballs, and the
# proxy is its static build; build.sh runs this script as its last step:
#
#   runtimes/vm/build-guest.sh --proxy <static action-proxy> \
#       --rootfs nodejs18=<tarball> --rootfs python311=<tarball> [--force]
#
# (a kind whose --rootfs is not given is left as it is; native needs none).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
: "${WHISK_TOOLS_DIR:=/opt/whisk-tools}"
OUT=$WHISK_TOOLS_DIR/vm
SELF=runtimes/vm/build-guest.sh
log() { printf '[vm-guest] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

PROXY=''
FORCE=''
declare -A ROOTFS=()
while [ $# -gt 0 ]; do
    case $1 in
        --proxy) PROXY=$2; shift 2 ;;
        --rootfs) ROOTFS[${2%%=*}]=${2#*=}; shift 2 ;;
        --force) FORCE=1; shift ;;
        *) die "unknown argument $1 (usage: $SELF --proxy <bin> --rootfs nodejs18=<tar> --rootfs python311=<tar> [--force])" ;;
    esac
done
[ -x "$PROXY" ] || die "--proxy: no static action proxy at '$PROXY' (runtimes/build.sh builds it)"
for kind in "${!ROOTFS[@]}"; do
    case $kind in nodejs18 | python311) ;; *) die "--rootfs: no guest kind $kind (nodejs18, python311)" ;; esac
    [ -f "${ROOTFS[$kind]}" ] || die "--rootfs $kind: '${ROOTFS[$kind]}' is missing (runtimes/build.sh makes it)"
done

# The guest's tools, from Debian (each installed once; the lock timeout waits for another apt).
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v cpio >/dev/null || need+=(cpio)
command -v lz4 >/dev/null || need+=(lz4)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]} (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o DPkg::Lock::Timeout=600 "${need[@]}" >/dev/null
fi

mkdir -p "$OUT"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
hash_of() { cat "$@" | sha256sum | cut -c1-16; }
# Whether $1 is current for inputs hash $2.
fresh() { [ -z "$FORCE" ] && [ -f "$1" ] && [ "$(cat "$1.inputs" 2>/dev/null)" = "$2" ]; }
# Moves the freshly built $1 to $2 and records inputs hash $3.
install_as() { mv -f "$1" "$2"; echo "$3" >"$2.inputs"; }

# 1. The kernel: the ABI package the metapackage points at today, unpacked (never installed).
abi=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$abi" ] || die "apt-cache depends linux-image-cloud-amd64 names no kernel package (apt-get update?)"
version=$(apt-cache show --no-all-versions "$abi" | awk '/^Version:/ {print $2; exit}')
kdir=$OUT/kernel/$abi-$version
if [ ! -f "$kdir/.complete" ]; then
    log "downloading $abi $version (first time only)"
    (cd "$work" && { apt-get download "$abi=$version" >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null && apt-get download "$abi=$version" >/dev/null 2>&1; }; }) ||
        die "apt-get download $abi=$version failed"
    rm -rf "$kdir" && mkdir -p "$kdir"
    dpkg -x "$work"/"$abi"_*.deb "$kdir/pkg"
    rm -f "$work"/"$abi"_*.deb
    touch "$kdir/.complete"
    # Kernels the metapackage no longer points at.
    find "$OUT/kernel" -mindepth 1 -maxdepth 1 ! -path "$kdir" -exec rm -rf {} +
fi
release=${abi#linux-image-}
vmlinuz=$kdir/pkg/boot/vmlinuz-$release
modroot=$kdir/pkg/lib/modules/$release/kernel
[ -f "$vmlinuz" ] || die "$vmlinuz is missing from the package"
h=$(hash_of "$vmlinuz" "$SELF")
if ! fresh "$OUT/vmlinux" "$h"; then
    # The uncompressed ELF inside the bzImage: it has the PVH entry note (CONFIG_PVH=y), so
    # QEMU starts it in 64-bit mode directly, which under TCG saves the real-mode setup and
    # the LZ4 decompression (0.2–0.5 s of a ~2 s boot here).
    grep -q '^CONFIG_KERNEL_LZ4=y' "$kdir/pkg/boot/config-$release" ||
        die "$abi is not LZ4-compressed; teach $SELF its decompressor"
    offset=$(grep -abo $'\x02\x21\x4c\x18' "$vmlinuz" | head -1 | cut -d: -f1)
    [ -n "$offset" ] || die "no LZ4 stream in $vmlinuz"
    # lz4 complains about the bytes after the stream; the ELF check below is what counts.
    tail -c +$((offset + 1)) "$vmlinuz" | lz4 -dc >"$work/vmlinux" 2>/dev/null || true
    [ "$(head -c 4 "$work/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] ||
        die "the LZ4 stream of $vmlinuz is not an ELF kernel"
    cp "$vmlinuz" "$work/vmlinuz"
    install_as "$work/vmlinuz" "$OUT/vmlinuz" "$h"
    install_as "$work/vmlinux" "$OUT/vmlinux" "$h"
    echo "$abi $version" >"$OUT/kernel.txt"
    log "kernel $abi $version: vmlinux $(du -h "$OUT/vmlinux" | cut -f1) (PVH ELF), vmlinuz $(du -h "$OUT/vmlinuz" | cut -f1)"
fi

# 2. The initramfs. The modules the guest needs (the kernel has them as =m: virtio-mmio for
#    microvm's devices, which its ACPI tables describe; the NIC; the root disk; overlayfs for
#    the writable layer) plus what their depends= pull in, in load order.
wanted=(virtio_mmio virtio_net virtio_blk overlay)
declare -A modpath=() seen=()
order=()
visit() {
    local m=$1 deps d
    [ -n "${seen[$m]:-}" ] && return 0
    seen[$m]=1
    modpath[$m]=$(find "$modroot" -name "$m.ko" -print -quit)
    [ -n "${modpath[$m]}" ] || die "module $m.ko is not in $abi"
    deps=$(tr '\0' '\n' <"${modpath[$m]}" | sed -n 's/^depends=//p' | head -1)
    for d in ${deps//,/ }; do visit "$d"; done
    order+=("$m")
}
for m in "${wanted[@]}"; do visit "$m"; done

log "building the static guest init"
RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=true \
    cargo build --quiet --release --locked -p vm-guest-init --bin guest-init \
    --target x86_64-unknown-linux-gnu --target-dir target/static
INIT=target/static/x86_64-unknown-linux-gnu/release/guest-init
if ldd "$INIT" 2>&1 | grep -q '=>'; then die "$INIT is not statically linked"; fi

mod_files=()
for m in "${order[@]}"; do mod_files+=("${modpath[$m]}"); done
h=$(hash_of "$INIT" "${mod_files[@]}" "$SELF")
if ! fresh "$OUT/initrd.img" "$h"; then
    r=$work/initrd
    mkdir -p "$r/lib/modules" "$r/proc" "$r/sys" "$r/dev"
    cp "$INIT" "$r/init"
    for m in "${order[@]}"; do cp "${modpath[$m]}" "$r/lib/modules/"; done
    printf '%s.ko\n' "${order[@]}" >"$r/lib/modules/load-order"
    # The kernel opens /dev/console on the initramfs for init's first fds.
    mknod -m 600 "$r/dev/console" c 5 1
    (cd "$r" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$work/initrd.img"
    install_as "$work/initrd.img" "$OUT/initrd.img" "$h"
    log "initrd.img built ($(du -h "$OUT/initrd.img" | cut -f1): init + ${order[*]})"
fi

# 3. A read-only ext4 root per kind (ext4 is built into the cloud kernel; no journal, no
#    checksums: nothing writes to it, and under TCG every verified block costs). The writes of
#    the action go to the tmpfs overlay guest-init puts on top.
# root_image <kind> <tarball or ''> <launcher or ''> <env lines>
root_image() {
    local kind=$1 tarball=$2 launcher=$3 env=$4 img h dir mb inodes started=$SECONDS
    img=$OUT/root-$kind.ext4
    h=$(hash_of "$PROXY" "$SELF" ${launcher:+"runtimes/launchers/$launcher"} <(echo "$kind $tarball $env"))
    fresh "$img" "$h" && { log "root-$kind.ext4 is up to date ($h)"; return 0; }
    dir=$work/root-$kind
    mkdir -p "$dir"
    [ -n "$tarball" ] && tar --numeric-owner -C "$dir" -xf "$tarball"
    mkdir -p "$dir/bin" "$dir/etc" "$dir/action" "$dir/proc" "$dir/sys" "$dir/dev" "$dir/tmp"
    chmod 1777 "$dir/tmp"
    cp "$PROXY" "$dir/bin/action-proxy"
    if [ -n "$launcher" ]; then
        mkdir -p "$dir/launcher"
        cp "runtimes/launchers/$launcher" "$dir/launcher/$launcher"
    fi
    printf '%s\n' "$env" >"$dir/etc/action-proxy.env"
    mb=$(( $(du -sm "$dir" | cut -f1) * 11 / 10 + 16 ))
    inodes=$(( $(find "$dir" | wc -l) + 1024 ))
    mkfs.ext4 -q -F -E root_owner=0:0 -t ext4 -L "whisk-$kind" -b 4096 -m 0 -N "$inodes" \
        -O ^has_journal,^metadata_csum,^resize_inode \
        -d "$dir" "$work/root-$kind.ext4" "${mb}M" >/dev/null || die "mkfs.ext4 of root-$kind failed"
    rm -rf "$dir"
    install_as "$work/root-$kind.ext4" "$img" "$h"
    log "root-$kind.ext4 built in $((SECONDS - started)) s (${mb} MB)"
}
root_image native '' '' 'OW_ACTION_DIR=/action
OW_SOURCE_FILE=exec'
# The same ENV as runtimes/build.sh's Dockerfiles.
if [ -n "${ROOTFS[nodejs18]:-}" ]; then
    root_image nodejs18 "${ROOTFS[nodejs18]}" launcher.js 'OW_ACTION_DIR=/action
OW_SOURCE_FILE=index.js
OW_LAUNCHER=node /launcher/launcher.js'
fi
if [ -n "${ROOTFS[python311]:-}" ]; then
    root_image python311 "${ROOTFS[python311]}" launcher.py 'OW_ACTION_DIR=/action
OW_SOURCE_FILE=__main__.py
OW_LAUNCHER=python3 /launcher/launcher.py'
fi
log "guest ready in $OUT ($abi $version)"
