#!/usr/bin/env bash
# Sets up everything on a fresh machine (as root) and runs the main job on the local stack:
# installs and starts the Docker engine, the Kafka-API broker and the CouchDB-API server,
# builds the workspace, runs the invoker's start-up checks against them and measures the
# broker round trip that every invoker<->controller hop pays.
# Stop everything with: scripts/stack.sh down
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/stack.sh up
# shellcheck source=/dev/null
source "${WHISK_STACK_DIR:-$PWD/.stack}/env"

echo "== building the workspace (release)"
cargo build --release --locked --workspace --bins

echo "== invoker start-up checks (topic invoker0, couchdb, docker)"
target/release/invoker --id 0 --check-only

echo "== broker round trip (produce -> consumer group), 200 hops"
target/release/bench kafka-rtt 200

cat <<MSG

The stack is up:
$(scripts/stack.sh status)

Tests:   scripts/test.sh
Stop:    scripts/stack.sh down
MSG
