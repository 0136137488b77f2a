#!/usr/bin/env bash
# Installs, once and idempotently, the tools the checks in openwhisk-conf/ run, and prints the
# path of the virtualenv's bin folder:
#   $WHISK_TOOLS_DIR/ansible-venv   ansible (with community.docker), ansible-lint,
#                                   kubernetes-validate (the Kubernetes JSON schemas), PyYAML,
#                                   the Docker SDK for Python (community.docker's modules)
#   docker-compose                  Debian's 1.29 package (apt, under /tmp/apt.lock)
# Usage: openwhisk-conf/tools.sh [--compose]
set -euo pipefail
: "${WHISK_TOOLS_DIR:=/opt/whisk-tools}"
VENV=$WHISK_TOOLS_DIR/ansible-venv
# Versions pinned so the checks do not change under us; the newest that run on Python 3.11.
PACKAGES=(ansible==10.7.0 ansible-lint==24.12.2 kubernetes-validate==1.31.0 docker==7.1.0 requests PyYAML)
log() { printf '[openwhisk-conf] %s\n' "$*" >&2; }

stamp=$VENV/.installed
want=$(printf '%s\n' "${PACKAGES[@]}")
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing ${PACKAGES[*]} into $VENV (first time only)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PACKAGES[@]}" >&2
    printf '%s\n' "$want" >"$stamp"
fi
if [ "${1:-}" = --compose ] && ! command -v docker-compose >/dev/null; then
    log "installing docker-compose (apt)"
    DEBIAN_FRONTEND=noninteractive flock /tmp/apt.lock apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
fi
echo "$VENV/bin"
