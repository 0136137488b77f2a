#!/usr/bin/env bash
# Sets up everything on a fresh machine (as root) and runs the main job on the local stack:
# installs and starts the Docker engine, the Kafka-API broker and the CouchDB-API server,
# builds the workspace and the runtime images, starts invoker 0, and plays an OpenWhisk
# controller against it: 20 activations through Kafka, each acknowledged on completed0 and
# recorded in CouchDB (the first a cold start, the rest warm). The invoker is stopped at the
# end (SIGTERM: it drains and removes its containers).
# Stop the stack with: scripts/stack.sh down
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/stack.sh up
# shellcheck source=/dev/null
source "${WHISK_STACK_DIR:-$PWD/.stack}/env"
state=${WHISK_STACK_DIR:-$PWD/.stack}

echo "== building the workspace (release)"
cargo build --release --locked --workspace --bins

echo "== broker round trip (produce -> consumer group), 200 hops"
target/release/bench kafka-rtt 200

echo "== starting invoker 0 (log: $state/invoker0.log)"
export KAFKA_HOSTS RUNTIMES_MANIFEST="$PWD/runtimes/runtimes.json" PORT="${WHISK_INVOKER_PORT:-18080}"
export CONFIG_whisk_couchdb_port="${WHISK_COUCHDB_PORT:-5984}"
export CONFIG_whisk_couchdb_username="${WHISK_COUCHDB_USER:-whisk_admin}"
export CONFIG_whisk_couchdb_password="${WHISK_COUCHDB_PASSWORD:-some_passw0rd}"
export CONFIG_whisk_containerPool_userMemory="2048 m"
target/release/invoker --id 0 --uniqueName 0 >"$state/invoker0.log" 2>&1 &
invoker=$!
trap 'kill -TERM $invoker 2>/dev/null; wait $invoker 2>/dev/null || true' EXIT
for _ in $(seq 1 60); do
    if exec 3<>"/dev/tcp/127.0.0.1/$PORT" 2>/dev/null; then
        printf 'GET /ping HTTP/1.0\r\n\r\n' >&3
        grep -q pong <&3 && { exec 3<&-; break; }
        exec 3<&-
    fi
    kill -0 $invoker 2>/dev/null || { cat "$state/invoker0.log"; exit 1; }
    sleep 0.5
done
echo "invoker 0 answers /ping on port $PORT"

echo "== playing the controller: 20 activations of guest/hello through invoker0"
target/release/bench activate --invoker 0 --controller 0 --count 20

echo "== stopping invoker 0 (drains, removes its containers)"
kill -TERM $invoker
wait $invoker || true
trap - EXIT

cat <<MSG

The stack is up:
$(scripts/stack.sh status)

Tests:   scripts/test.sh
Stop:    scripts/stack.sh down
MSG
