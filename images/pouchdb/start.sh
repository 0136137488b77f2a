#!/bin/sh
# pouchdb-server reads its admins from a config file and hashes the plaintext password at
# start-up, as CouchDB does (scripts/stack.sh starts it the same way).
set -eu
mkdir -p /data
printf '{"admins":{"%s":"%s"},"log":{"file":"/data/pouchdb.log"}}\n' \
    "$COUCHDB_USER" "$COUCHDB_PASSWORD" >/data/config.json
cd /data
exec /opt/pouchdb-server/node_modules/.bin/pouchdb-server --in-memory --host 0.0.0.0 \
    --port "$PORT" --no-stdout-logs --config /data/config.json
