#!/bin/bash
# Entry point of the invoker image, called as the Scala image's /init.sh is:
#   ansible: /bin/sh -c "exec /init.sh --id N --uniqueName N >> /logs/invokerN_logs.log 2>&1"
#   helm:    /bin/bash -c "/init.sh --uniqueName $INVOKER_NAME"
#   compose: /bin/sh -c "exec /init.sh --id 0 >> /logs/invoker-local_logs.log 2>&1"
# The Scala script turns CONFIG_* variables into -D flags for the JVM; the Rust invoker reads
# CONFIG_*, INVOKER_OPTS's -D tokens and OPENWHISK_ENCODED_CONFIG itself, so this only checks
# the options and execs the binary (signals then reach it directly: docker stop drains it).
set -euo pipefail
# The binary; openwhisk-conf/check.sh points this at a stub to test the argument handling.
INVOKER=${OWC_INIT_INVOKER:-/usr/local/bin/invoker}

usage() {
    echo "usage: /init.sh (--id N | --uniqueName NAME) [--uniqueName NAME] [--displayedName NAME] [--overwriteId N]" >&2
    exit 2
}

args=()
have_id=false have_name=false
while [ $# -gt 0 ]; do
    case $1 in
        --id | --uniqueName | --displayedName | --overwriteId)
            [ $# -ge 2 ] || usage
            [ "$1" = --id ] && have_id=true
            [ "$1" = --uniqueName ] && have_name=true
            args+=("$1" "$2")
            shift 2
            ;;
        --id=* | --uniqueName=* | --displayedName=* | --overwriteId=*)
            case $1 in --id=*) have_id=true ;; --uniqueName=*) have_name=true ;; esac
            args+=("$1")
            shift
            ;;
        *)
            echo "/init.sh: unknown argument '$1' (the Scala invoker accepts only option-style arguments too)" >&2
            usage
            ;;
    esac
done
$have_id || $have_name || usage

# Docker mounts /proc/sys read-only in a container that is not privileged. The pools set the
# per-namespace sysctls of the namespaces they create (net.ipv4.tcp_child_ehash_entries, IPv6
# off), so with CAP_SYS_ADMIN (which the configs grant in place of privileged where dockerd
# cannot start privileged containers) /proc/sys is made writable, as privileged has it. Without
# the capability this fails quietly: the Docker mode needs no sysctl, the pools report their own.
if awk '$5 == "/proc/sys" && $6 ~ /(^|,)ro(,|$)/ { found = 1 } END { exit !found }' /proc/self/mountinfo; then
    mount -o remount,bind,rw /proc/sys 2>/dev/null || true
fi

exec "$INVOKER" "${args[@]}"
