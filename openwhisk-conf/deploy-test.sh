#!/usr/bin/env bash
# Live test of the deployments in openwhisk-conf/ on this machine's dockerd (a few minutes):
#
#   ansible  the broker (tansu) and CouchDB (pouchdb-server) as containers, the front door
#            (standalone) on the host, then our playbook (ansible/deploy-invoker.yml, -c local)
#            deploys the invoker image as invoker960; checks /ping as the playbook's wait does
#            (with https: with the client certificate, and refused without one), that the front
#            door lists invoker960/960 up, and a real Node.js activation; then `mode=clean`
#   compose  compose/docker-compose.yml up (project owconf), the npm client's e2e
#            (standalone/tests/npm/e2e.js: Node.js, Python, native and wasm:0.1 actions, logs,
#            limits, 50 concurrent activations) against it, down -v
#   zookeeper two invoker containers started as the helm chart starts them (`/init.sh
#            --uniqueName $INVOKER_NAME`, no --id) take distinct ids from the stack's ZooKeeper
#            (under a chroot of this run's, removed afterwards), and a restarted one its id again
#
# and after each part, that nothing it made is left: containers (the invoker's action
# containers, wsk960960*, included), networks, volumes, the VM guests' cgroups.
#
# Ports and ids keep clear of the shared stack (9092, 5984, 3233, invoker 0) and of the ids the
# Rust tests pick (100-939): the broker on 19092, CouchDB on 15984, the API on 13233, invoker id
# 960 (action containers wsk960960_* on the shared dockerd).
#
# Needs: dockerd, ZooKeeper, the runtime images and VM guests (scripts/stack.sh up, runtimes/build.sh),
# node and the openwhisk npm client (scripts/stack.sh up installs it), cc (the native action).
# Builds the images first (images/build.sh; nothing is rebuilt when up to date).
#
#   OWC_PROTOCOL=https|http   the invoker's protocol in the ansible part (default https)
#   OWC_PARTS="ansible compose zookeeper"
#
# Usage: openwhisk-conf/deploy-test.sh
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
: "${WHISK_TOOLS_DIR:=/opt/whisk-tools}"
: "${WHISK_OPENWHISK_NODE_PATH:=$WHISK_TOOLS_DIR/openwhisk-3.21.9/node_modules}"
: "${OWC_PARTS:=ansible compose zookeeper}"
: "${WHISK_ZOOKEEPER_PORT:=2181}"
ZK_PORT=$WHISK_ZOOKEEPER_PORT
ZK_CLI=/usr/share/zookeeper/bin/zkCli.sh
ZK_CHROOT=
KAFKA_PORT=19092 COUCHDB_PORT=15984 API_PORT=13233 ID=960
PREFIX=wsk$ID$ID
GUEST=23bc46b1-71f6-4ed5-8c54-816aa4f8c502:123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP
WHISK_SYSTEM=789c46b1-71f6-4ed5-8c54-816aa4f8c502:abczO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP
PROJECT=owconf
COMPOSE=(docker-compose -p "$PROJECT" -f "$HERE/compose/docker-compose.yml")
log() { printf '[deploy-test] %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
ok() { printf 'ok - %s\n' "$*"; }

BIN=$("$HERE/tools.sh" --compose)
export PATH=$BIN:$PATH
WORK=$(mktemp -d /tmp/owconf-test.XXXXXX)
DOOR_PID=

# --- preconditions ----------------------------------------------------------------------------
docker info >/dev/null 2>&1 || die "dockerd does not answer; start it with scripts/stack.sh up"
for image in openwhisk/action-nodejs-v18:nightly openwhisk/dockerskeleton:nightly; do
    docker image inspect "$image" >/dev/null 2>&1 || die "$image is missing; runtimes/build.sh builds it"
done
[ -f "$WHISK_OPENWHISK_NODE_PATH/openwhisk/package.json" ] ||
    die "the openwhisk npm client is not in $WHISK_OPENWHISK_NODE_PATH; scripts/stack.sh up installs it"
"$REPO/images/build.sh"
STATIC=${WHISK_STATIC_TARGET_DIR:-$REPO/target/static}/x86_64-unknown-linux-gnu/release

# https, as the role's default (invoker.protocol), with client certificates.
: "${OWC_PROTOCOL:=https}"
[ "$OWC_PROTOCOL" = https ] || log "NOTE: the ansible part runs over $OWC_PROTOCOL, without the https checks"

# Docker's privileged mode needs every capability in dockerd's own bounding set; where some
# are missing (this machine's lacks CAP_SYS_RESOURCE) the playbook gets the invoker's own list.
if docker run --rm --privileged whisk/invoker:latest true >/dev/null 2>&1; then PRIVILEGED=true; else
    PRIVILEGED=false
    log "NOTE: dockerd cannot start privileged containers here; the playbook runs with invoker_privileged=false"
fi

# --- leftovers --------------------------------------------------------------------------------
leftovers() { # what the parts may leave: prints one line per thing
    docker ps -a --format '{{.Names}}' | grep -E "^($PREFIX|wskowczk|invoker$ID$|owconf-|${PROJECT}_)" || true
    docker network ls --format '{{.Name}}' | grep -E "^${PROJECT}_" || true
    docker volume ls --format '{{.Name}}' | grep -E "^${PROJECT}_" || true
    # The VM guests' and runc's cgroups are the host's (the invoker mounts /sys/fs/cgroup).
    find /sys/fs/cgroup -maxdepth 3 -path '*/wsk-vm/*' -name "$PREFIX*" -o -maxdepth 3 -path '*/wsk-runc/*' -name "$PREFIX*" 2>/dev/null || true
}
cleanup() {
    set +e
    [ -n "$DOOR_PID" ] && kill "$DOOR_PID" 2>/dev/null && wait "$DOOR_PID" 2>/dev/null
    if docker ps -a --format '{{.Names}}' | grep -q "^invoker$ID$"; then
        ansible-playbook -i "$HERE/ansible/hosts.ini" "$HERE/ansible/deploy-invoker.yml" \
            -e invoker_index_base=$ID -e mode=clean >/dev/null 2>&1
    fi
    docker rm -f owconf-kafka owconf-couchdb owconf-zk-a owconf-zk-b >/dev/null 2>&1
    [ -n "$ZK_CHROOT" ] && zk deleteall "$ZK_CHROOT"
    "${COMPOSE[@]}" down -v --remove-orphans --timeout 30 >/dev/null 2>&1
    # After a failure, action containers an invoker did not get to remove (only ours: the
    # prefix is this test's invoker's).
    docker ps -aq --filter "name=^$PREFIX" | xargs -r docker rm -f >/dev/null 2>&1
    docker ps -aq --filter "name=^wskowczk" | xargs -r docker rm -f >/dev/null 2>&1
    rm -rf "$WORK"
}
trap cleanup EXIT
[ -z "$(leftovers)" ] || die "leftovers of an earlier run: $(leftovers | tr '\n' ' ') (remove them first)"

# An API call with the guest key: method path [body]; prints the body, fails on non-2xx.
api() {
    curl -sS --fail-with-body --max-time 70 -u "$GUEST" -X "$1" -H 'Content-Type: application/json' \
        "http://127.0.0.1:$API_PORT/api/v1/namespaces/_$2" ${3:+-d "$3"}
}
wait_for() { # seconds what command...
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || { log "$what did not answer in time"; return 1; }
        sleep 0.5
    done
}
wait_up() { # seconds
    local deadline=$((SECONDS + $1))
    until curl -sf --max-time 5 "http://127.0.0.1:$API_PORT/invokers" | grep -q "\"invoker$ID/$ID\":\"up\""; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 1
    done
}

# The broker and CouchDB as containers, published on the docker0 address $1, which both the
# host and containers on Docker's bridge reach.
start_backends() {
    local gw=$1
    docker run -d --name owconf-kafka -p "$gw:$KAFKA_PORT:9092" \
        -e ADVERTISED_LISTENER_URL="tcp://$gw:$KAFKA_PORT" whisk/tansu:0.6.0 >/dev/null
    docker run -d --name owconf-couchdb -p "$gw:$COUCHDB_PORT:5984" whisk/pouchdb-server:4.2.0 >/dev/null
    # The front door and the invoker stop at start-up when either does not answer yet.
    wait_for 30 "CouchDB" curl -sf --max-time 2 -u whisk_admin:some_passw0rd "http://$gw:$COUCHDB_PORT/" || die "CouchDB did not start"
    wait_for 30 "the broker" bash -c "exec 3<>/dev/tcp/$gw/$KAFKA_PORT" || die "the broker did not start"
}
stop_backends() { docker rm -f owconf-kafka owconf-couchdb >/dev/null; }

# --- ansible ----------------------------------------------------------------------------------
ansible_part() {
    local gw conf out
    gw=$(docker network inspect bridge --format '{{ (index .IPAM.Config 0).Gateway }}')
    log "ansible: broker and CouchDB on $gw:$KAFKA_PORT / $gw:$COUCHDB_PORT, front door on :$API_PORT"
    start_backends "$gw"
    KAFKA_HOSTS=$gw:$KAFKA_PORT RUNTIMES_MANIFEST=$REPO/runtimes/runtimes.json \
        CONFIG_whisk_couchdb_host=$gw CONFIG_whisk_couchdb_port=$COUCHDB_PORT \
        "$STATIC/standalone" --port "$API_PORT" --controller 0 >"$WORK/standalone.log" 2>&1 &
    DOOR_PID=$!

    log "ansible: deploy-invoker.yml (protocol $OWC_PROTOCOL)"
    ansible-playbook -i "$HERE/ansible/hosts.ini" "$HERE/ansible/deploy-invoker.yml" \
        -e invoker_index_base=$ID -e kafka_connect_string="$gw:$KAFKA_PORT" \
        -e db_host="$gw" -e db_port=$COUCHDB_PORT -e invoker_protocol="$OWC_PROTOCOL" \
        -e invoker_privileged=$PRIVILEGED -e openwhisk_tmp_dir="$WORK" \
        -e whisk_api_host_proto=http -e whisk_api_host_name="$gw" -e whisk_api_host_port=$API_PORT \
        >"$WORK/ansible.log" 2>&1 || { cat "$WORK/ansible.log" >&2; die "the playbook failed"; }
    ok "ansible: deploy-invoker.yml deployed invoker$ID and its /ping wait passed"

    local url=$OWC_PROTOCOL://127.0.0.1:$((12001 + ID))/ping
    conf=$WORK/wskconf/invoker/invoker$ID
    if [ "$OWC_PROTOCOL" = https ]; then
        out=$(curl -sS -k --max-time 5 --cert "$conf/invoker-openwhisk-server-cert.pem" \
            --key "$conf/invoker-openwhisk-server-key.pem" "$url") || die "https /ping with the client certificate failed"
        [ "$out" = pong ] || die "https /ping answered '$out'"
        ok "ansible: https /ping with the client certificate answers pong"
        if curl -s -k --max-time 5 "$url" >/dev/null; then die "https /ping without a client certificate was answered"; fi
        ok "ansible: https /ping without a client certificate is refused"
    else
        [ "$(curl -sS --max-time 5 "$url")" = pong ] || die "/ping did not answer pong"
        ok "ansible: /ping answers pong (http)"
    fi
    [ -s "$WORK/wsklogs/invoker$ID/invoker${ID}_logs.log" ] ||
        die "the invoker's output did not reach /logs/invoker${ID}_logs.log"
    ok "ansible: the invoker's output goes to the logs folder, as the role redirects it"

    wait_up 90 || { tail -20 "$WORK/standalone.log" >&2; die "the front door never listed invoker$ID/$ID as up"; }
    ok "ansible: the front door lists invoker$ID/$ID as up"
    api PUT /actions/owchello?overwrite=true \
        '{"exec":{"kind":"nodejs:default","code":"function main(p) { console.log(\"hello log\"); return {msg: \"hi \" + p.name} }"}}' >/dev/null
    out=$(api POST '/actions/owchello?blocking=true&result=true' '{"name":"ansible"}') ||
        die "the activation failed: $out"
    [ "$out" = '{"msg":"hi ansible"}' ] || die "the activation answered $out"
    ok "ansible: a Node.js activation through the deployed invoker answers {\"msg\":\"hi ansible\"}"

    ansible-playbook -i "$HERE/ansible/hosts.ini" "$HERE/ansible/deploy-invoker.yml" \
        -e invoker_index_base=$ID -e mode=clean >"$WORK/clean.log" 2>&1 ||
        { cat "$WORK/clean.log" >&2; die "mode=clean failed"; }
    kill "$DOOR_PID"
    wait "$DOOR_PID" 2>/dev/null || true
    DOOR_PID=
    stop_backends
    [ -z "$(leftovers)" ] || die "left after the ansible part: $(leftovers | tr '\n' ' ')"
    ok "ansible: mode=clean removed the invoker, which removed its action containers; nothing is left"
}

# --- compose ----------------------------------------------------------------------------------
# The native action of the npm e2e: a static C program zipped as `exec` (as
# invoker/tests/common/native.rs builds it for the Rust tests).
native_zip() {
    cat >"$WORK/a.c" <<'EOF'
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    const char *in = argc > 1 ? argv[1] : "";
    const char *n = strstr(in, "\"name\":\""); char name[64] = "";
    if (n) sscanf(n + 8, "%63[^\"]", name);
    printf("native log line\n");
    printf("{\"native\":\"%s\"}\n", name);
    return 0;
}
EOF
    cc -static -O2 -o "$WORK/exec" "$WORK/a.c"
    python3 - "$WORK/exec" "$WORK/native.zip" <<'EOF'
import sys, zipfile
info = zipfile.ZipInfo("exec")
info.external_attr = 0o100755 << 16
with zipfile.ZipFile(sys.argv[2], "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr(info, open(sys.argv[1], "rb").read())
EOF
}

compose_part() {
    local wat=$REPO/unikernel/functions/hello.wat out
    native_zip
    cargo build --quiet --offline --release --manifest-path "$HERE/tools/wat2wasm/Cargo.toml" \
        --target-dir "$REPO/target/owconf-tools"
    "$REPO/target/owconf-tools/release/owconf-wat2wasm" "$wat" "$WORK/main.wasm"
    (cd "$WORK" && python3 -c 'import zipfile; zipfile.ZipFile("wasm.zip", "w").write("main.wasm")')

    log "compose: up (project $PROJECT)"
    "${COMPOSE[@]}" up -d >"$WORK/compose-up.log" 2>&1 || { cat "$WORK/compose-up.log" >&2; die "compose up failed"; }
    wait_up 120 || { "${COMPOSE[@]}" logs --tail 30 >&2; die "the front door never listed invoker$ID/$ID as up"; }
    ok "compose: up; the front door lists invoker$ID/$ID as up"
    [ "$(curl -sS --max-time 5 "http://127.0.0.1:12711/ping")" = pong ] || die "the invoker's /ping did not answer pong"
    ok "compose: the invoker's /ping answers pong"

    log "compose: the npm client's e2e (standalone/tests/npm/e2e.js)"
    if ! out=$(NODE_PATH=$WHISK_OPENWHISK_NODE_PATH APIHOST=http://127.0.0.1:$API_PORT AUTH=$GUEST WHISK_SYSTEM_AUTH=$WHISK_SYSTEM \
        NATIVE_ZIP=$WORK/native.zip WASM_WAT=$wat WASM_ZIP=$WORK/wasm.zip \
        node "$REPO/standalone/tests/npm/e2e.js" 2>&1) || ! grep -q 'all checks passed' <<<"$out"; then
        printf '%s\n' "$out" >&2
        "${COMPOSE[@]}" exec -T invoker tail -40 /logs/invoker${ID}_logs.log >&2 || true
        die "the npm e2e failed against the compose deployment"
    fi
    printf '%s\n' "$out" | sed 's/^/    /'
    ok "compose: the npm client's e2e passes against the compose deployment"

    "${COMPOSE[@]}" down -v --remove-orphans --timeout 30 >"$WORK/compose-down.log" 2>&1 ||
        { cat "$WORK/compose-down.log" >&2; die "compose down failed"; }
    [ -z "$(leftovers)" ] || die "left after compose down: $(leftovers | tr '\n' ' ')"
    ok "compose: down -v left no container, network or volume (action containers included)"
}

# --- zookeeper: the helm chart's command line ---------------------------------------------------
# Two invokers started as the chart starts them (`/bin/bash -c "/init.sh --uniqueName
# $INVOKER_NAME"`, no --id) take distinct ids from ZooKeeper, and a restarted one takes its id
# again. ZooKeeper is the stack's (scripts/stack.sh up; 127.0.0.1:2181), under a chroot of this
# run's own that is removed afterwards, so the ids start from 0 and touch no one else's.
zk() { "$ZK_CLI" -server "127.0.0.1:$ZK_PORT" "$@" >/dev/null 2>&1; }
invoker_id() { # container: the id in its "invoker ready" line
    docker logs "$1" 2>&1 | sed -n 's/.*invoker ready topic="invoker\([0-9]*\)".*/\1/p' | tail -1
}
zookeeper_part() {
    local gw chroot name port a b again
    gw=$(docker network inspect bridge --format '{{ (index .IPAM.Config 0).Gateway }}')
    [ -x "$ZK_CLI" ] || die "$ZK_CLI is missing; scripts/stack.sh up installs Debian's zookeeper"
    bash -c "exec 3<>/dev/tcp/127.0.0.1/$ZK_PORT" 2>/dev/null || die "no ZooKeeper on 127.0.0.1:$ZK_PORT; scripts/stack.sh up starts it"
    chroot=/owconf-test-$$
    zk create "$chroot" "" || die "cannot create $chroot in ZooKeeper"
    ZK_CHROOT=$chroot
    start_backends "$gw"
    # No wasm:0.1 kind and no sandbox annotation: no VM backend, which on the host's network
    # would create its bridges on the host.
    python3 -c 'import json, sys
m = json.load(open(sys.argv[1])); m["runtimes"] = {k: v for k, v in m["runtimes"].items() if all(not e["kind"].startswith("wasm") for e in v)}
json.dump(m, open(sys.argv[2], "w"))' "$REPO/runtimes/runtimes.json" "$WORK/manifest.json"
    for name in a b; do
        case $name in a) port=12971 ;; b) port=12972 ;; esac
        docker run -d --name "owconf-zk-$name" --network host --pid host \
            --cap-add NET_ADMIN --cap-add SYS_ADMIN --cap-add SYS_PTRACE \
            -e PORT=$port -e INVOKER_NAME="owczk$name" -e KAFKA_HOSTS="$gw:$KAFKA_PORT" \
            -e ZOOKEEPER_HOSTS="127.0.0.1:$ZK_PORT$chroot" -e RUNTIMES_MANIFEST=/etc/whisk/runtimes.json \
            -e CONFIG_whisk_couchdb_host="$gw" -e CONFIG_whisk_couchdb_port=$COUCHDB_PORT \
            -e CONFIG_whisk_invoker_vm_allowAnnotation=false \
            -v "$WORK/manifest.json:/etc/whisk/runtimes.json:ro" -v /var/run/docker.sock:/var/run/docker.sock \
            -v /var/lib/docker/containers:/var/lib/docker/containers:ro -v /sys/fs/cgroup:/sys/fs/cgroup \
            whisk/invoker:latest /bin/bash -c '/init.sh --uniqueName $INVOKER_NAME' >/dev/null
    done
    for name in a b; do
        wait_for 90 "invoker owczk$name" bash -c "docker logs owconf-zk-$name 2>&1 | grep -q 'invoker ready'" ||
            { docker logs --tail 20 "owconf-zk-$name" >&2; die "owczk$name did not start"; }
    done
    a=$(invoker_id owconf-zk-a) b=$(invoker_id owconf-zk-b)
    [ -n "$a" ] && [ -n "$b" ] && [ "$a" != "$b" ] || die "the two invokers got ids '$a' and '$b'"
    ok "zookeeper: two invokers started with --uniqueName alone got distinct ids ($a and $b)"
    docker restart -t 30 owconf-zk-a >/dev/null
    wait_for 90 "invoker owczka after its restart" bash -c "[ \$(docker logs owconf-zk-a 2>&1 | grep -c 'invoker ready') -ge 2 ]" ||
        { docker logs --tail 20 owconf-zk-a >&2; die "owczka did not start again"; }
    again=$(invoker_id owconf-zk-a)
    [ "$again" = "$a" ] || die "owczka came back with id '$again', not $a"
    ok "zookeeper: the restarted invoker took its id $a again"
    docker stop -t 30 owconf-zk-a owconf-zk-b >/dev/null
    docker rm owconf-zk-a owconf-zk-b >/dev/null
    stop_backends
    zk deleteall "$chroot"
    ZK_CHROOT=
    [ -z "$(leftovers)" ] || die "left after the zookeeper part: $(leftovers | tr '\n' ' ')"
    ok "zookeeper: the invokers removed their containers; the chroot is gone; nothing is left"
}

for part in $OWC_PARTS; do
    case $part in
        ansible) ansible_part ;;
        compose) compose_part ;;
        zookeeper) zookeeper_part ;;
        *) die "unknown part '$part' (ansible, compose, zookeeper)" ;;
    esac
done
echo "openwhisk-conf/deploy-test.sh: all checks passed ($OWC_PARTS; invoker protocol $OWC_PROTOCOL)"
