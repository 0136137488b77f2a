#!/usr/bin/env bash
# The local stack of real components every test, benchmark and the quickstart run against:
#
#   docker   the Docker engine (Debian's docker.io); dockerd is started only when no engine answers
#   kafka    the Kafka-API broker tansu 0.6.0 on 127.0.0.1:$WHISK_KAFKA_PORT
#   couchdb  pouchdb-server 4.2.0 (CouchDB HTTP API) on 127.0.0.1:$WHISK_COUCHDB_PORT, with an admin
#   zookeeper  Debian's zookeeper (3.8) on 127.0.0.1:$WHISK_ZOOKEEPER_PORT, standalone: the invokers'
#            id assignment (`--uniqueName` without `--id`)
#
# `up` also builds the action runtime images (runtimes/build.sh), cached by their inputs.
#
# Usage: scripts/stack.sh up|zookeeper|docker|openwhisk|down|status|env
#
#   up         install what is missing (idempotent), start what is not running, health-check them all
#   zookeeper  install and start only ZooKeeper (and rewrite the env file); leaves the rest alone
#   docker     start only dockerd, when no engine answers (the fault suite restarts it this way)
#   openwhisk  on top: invoker 0 ($WHISK_NETWORK_MODE, default netns) and the standalone front door
#              on $WHISK_API_PORT (default 3233); needs the release build
#   down       stop what `up` and `openwhisk` started (by pid), wait until every process of theirs
#              has exited
#   status  say what runs where, and who started it
#   env     print the environment (shell syntax) that tests and tools read
#
# Everything this script starts is recorded in $WHISK_STACK_DIR (git-ignored, default .stack/ in
# the repository): pids, logs, data and the env file. Installed tools live in $WHISK_TOOLS_DIR
# (default /opt/whisk-tools), outside the repository, so that a fresh clone on the same machine
# reinstalls nothing. Read shared/stack-notes.md for the traps this script works around.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${WHISK_STACK_DIR:=$REPO/.stack}"
: "${WHISK_TOOLS_DIR:=/opt/whisk-tools}"
: "${WHISK_KAFKA_PORT:=9092}"
: "${WHISK_KAFKA_STORAGE:=memory}"   # memory | sqlite (sqlite keeps topics and offsets across restarts)
: "${WHISK_COUCHDB_PORT:=5984}"
: "${WHISK_COUCHDB_USER:=whisk_admin}"
: "${WHISK_COUCHDB_PASSWORD:=some_passw0rd}"
: "${WHISK_ZOOKEEPER_PORT:=2181}"
: "${WHISK_API_PORT:=3233}"
: "${WHISK_INVOKER_PORT:=18080}"
: "${WHISK_INVOKER_USER_MEMORY:=8192 m}"
: "${WHISK_NETWORK_MODE:=netns}"
# netns mode: invoker 0's namespace range. Other invokers on this host (bench coldstart: 10.231,
# the e2e tests: 10.150-10.199) take ranges of their own; netpool refuses an overlapping one.
: "${WHISK_NETNS_SUBNET:=10.230.0.0/16}"

TANSU_VERSION=0.6.0
POUCHDB_VERSION=4.2.0
OPENWHISK_NPM_VERSION=3.21.9
TANSU_BIN=$WHISK_TOOLS_DIR/tansu-$TANSU_VERSION/bin/tansu
POUCHDB_BIN=$WHISK_TOOLS_DIR/pouchdb-server-$POUCHDB_VERSION/node_modules/.bin/pouchdb-server
# The `openwhisk` npm client, for the front door's end-to-end tests and the stress scripts.
OPENWHISK_NODE_PATH=$WHISK_TOOLS_DIR/openwhisk-$OPENWHISK_NPM_VERSION/node_modules
PIDS=$WHISK_STACK_DIR/pids
LOGS=$WHISK_STACK_DIR/logs

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

# --- helpers ---------------------------------------------------------------------------------

pid_of() { # name -> pid recorded by `up`, if that process still lives
    local f=$PIDS/$1.pid pid
    [ -f "$f" ] || return 1
    pid=$(cat "$f")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # timeout_s description command...
    local timeout=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.2
    done
    log "$what ready"
}

# Start a command in its own session so that `down` can find every process it leaves behind.
# Without job control, a background child is not a group leader, so setsid execs in place and
# $! is the daemon's own pid and session id.
spawn() { # name workdir command...
    local name=$1 dir=$2
    shift 2
    mkdir -p "$PIDS" "$LOGS" "$dir"
    # 9>&-: the daemon must not inherit the lock's fd, or it would hold the lock for its life.
    (cd "$dir" && exec setsid "$@" </dev/null >"$LOGS/$name.log" 2>&1 9>&-) &
    echo $! >"$PIDS/$name.pid"
}

need_apt() { # package command: install the Debian package when the command is missing
    command -v "$2" >/dev/null 2>&1 && return 0
    log "installing $1 (apt)"
    if [ -z "${APT_UPDATED:-}" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >/dev/null
}

take_lock() {
    exec 9>"$WHISK_STACK_DIR/lock"
    flock -w 1200 9 || die "another scripts/stack.sh still holds $WHISK_STACK_DIR/lock after 20 min"
}

# --- health checks (each is a real round trip with the component) ----------------------------

docker_ok() { timeout 10 docker info --format '{{.ServerVersion}}'; }

# A Kafka API round trip: Metadata through the broker's own client.
kafka_ok() {
    timeout 10 "$TANSU_BIN" topic list --broker "tcp://127.0.0.1:$WHISK_KAFKA_PORT"
}

# An authenticated GET / (pouchdb-server has no /_up).
couch_ok() {
    curl -sf --max-time 5 -u "$WHISK_COUCHDB_USER:$WHISK_COUCHDB_PASSWORD" \
        "http://127.0.0.1:$WHISK_COUCHDB_PORT/" | grep -q -e express-pouchdb -e couchdb
}

# ZooKeeper's `ruok` four-letter word (whitelisted in the config start_zookeeper writes).
# The server closes the connection after its answer.
zookeeper_ok() {
    [ "$( (exec 3<>"/dev/tcp/127.0.0.1/$WHISK_ZOOKEEPER_PORT" && printf ruok >&3 && timeout 5 cat <&3) 2>/dev/null)" = imok ]
}

# --- install ----------------------------------------------------------------------------------

install_base() {
    need_apt curl curl
    need_apt procps ps
    need_apt iproute2 ip
    need_apt conntrack conntrack
    need_apt docker.io dockerd
    # netns mode's second OCI runtime (whisk.invoker.runc.runtime = crun); docker.io brings runc.
    need_apt crun crun
    command -v node >/dev/null 2>&1 || need_apt nodejs node
    command -v npm >/dev/null 2>&1 || need_apt npm npm
    command -v cargo >/dev/null 2>&1 || die "cargo not found: this project needs a Rust toolchain (1.95 or newer)"
    command -v cc >/dev/null 2>&1 || need_apt gcc cc
}

install_zookeeper() {
    # The package puts its jar (with the class path of its dependencies) here; it brings Java.
    [ -f /usr/share/java/zookeeper.jar ] && command -v java >/dev/null 2>&1 && return 0
    need_apt zookeeper /usr/share/zookeeper/bin/zkServer.sh
}

install_tansu() {
    if [ -x "$TANSU_BIN" ] && "$TANSU_BIN" --help 2>/dev/null | grep -q 'Storage engines:.*dynostore'; then
        return 0
    fi
    # A plain `cargo install tansu` has no storage engine (stack-notes §1.1).
    log "installing tansu $TANSU_VERSION with storage engines (first time only, ~16 min on 2 cores)"
    mkdir -p "$WHISK_TOOLS_DIR/logs"
    cargo install "tansu@$TANSU_VERSION" --locked --features dynostore,libsql --force \
        --root "$WHISK_TOOLS_DIR/tansu-$TANSU_VERSION" >"$WHISK_TOOLS_DIR/logs/tansu-install.log" 2>&1 ||
        die "cargo install tansu failed, see $WHISK_TOOLS_DIR/logs/tansu-install.log"
    "$TANSU_BIN" --help | grep -q 'Storage engines:.*dynostore' || die "tansu built without storage engines"
}

install_pouchdb() {
    [ -x "$POUCHDB_BIN" ] && return 0
    log "installing pouchdb-server $POUCHDB_VERSION (npm, first time only, ~2 min)"
    mkdir -p "$WHISK_TOOLS_DIR/logs"
    npm install --prefix "$WHISK_TOOLS_DIR/pouchdb-server-$POUCHDB_VERSION" --no-audit --no-fund \
        "pouchdb-server@$POUCHDB_VERSION" >"$WHISK_TOOLS_DIR/logs/pouchdb-install.log" 2>&1 ||
        die "npm install pouchdb-server failed, see $WHISK_TOOLS_DIR/logs/pouchdb-install.log"
}

install_openwhisk_client() {
    [ -f "$OPENWHISK_NODE_PATH/openwhisk/package.json" ] && return 0
    log "installing the openwhisk npm client $OPENWHISK_NPM_VERSION (npm, first time only)"
    mkdir -p "$WHISK_TOOLS_DIR/logs"
    npm install --prefix "$WHISK_TOOLS_DIR/openwhisk-$OPENWHISK_NPM_VERSION" --no-audit --no-fund \
        "openwhisk@$OPENWHISK_NPM_VERSION" >"$WHISK_TOOLS_DIR/logs/openwhisk-install.log" 2>&1 ||
        die "npm install openwhisk failed, see $WHISK_TOOLS_DIR/logs/openwhisk-install.log"
}

# --- start ------------------------------------------------------------------------------------

start_docker() {
    if docker_ok >/dev/null 2>&1; then
        pid_of docker >/dev/null || log "docker: an engine already answers; using it (not ours to stop)"
        return 0
    fi
    pid_of docker >/dev/null && die "dockerd (pid $(pid_of docker)) runs but does not answer; see $LOGS/docker.log"
    log "starting dockerd"
    # --iptables stays on: bridge networking (port publishing, inter-container isolation) needs it.
    spawn docker "$WHISK_STACK_DIR" dockerd --host unix:///var/run/docker.sock
    wait_for 60 "docker" docker_ok || die "dockerd did not answer within 60 s; see $LOGS/docker.log"
}

# True when component `name` already runs: started by us and healthy, or someone else's that
# answers its health check on its port (used, and left alone by `down`).
already_running() { # name port health-function
    local name=$1 port=$2 ok=$3
    if pid_of "$name" >/dev/null; then
        wait_for 20 "$name" "$ok" || die "$name (pid $(pid_of "$name")) does not answer; see $LOGS/$name.log"
        return 0
    fi
    if port_open "$port"; then
        "$ok" >/dev/null 2>&1 || die "127.0.0.1:$port is taken by something that does not answer as $name"
        log "$name: something already answers on $port; using it (not ours to stop)"
        return 0
    fi
    return 1
}

start_kafka() {
    already_running kafka "$WHISK_KAFKA_PORT" kafka_ok && return 0
    local storage
    case $WHISK_KAFKA_STORAGE in
        memory) storage=memory://tansu/ ;;
        sqlite) storage=sqlite://tansu.db ;;
        *) die "WHISK_KAFKA_STORAGE must be memory or sqlite, not '$WHISK_KAFKA_STORAGE'" ;;
    esac
    log "starting tansu on 127.0.0.1:$WHISK_KAFKA_PORT ($storage)"
    spawn kafka "$WHISK_STACK_DIR/kafka" "$TANSU_BIN" broker \
        --listener-url "tcp://127.0.0.1:$WHISK_KAFKA_PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$WHISK_KAFKA_PORT" \
        --storage-engine "$storage"
    wait_for 30 "kafka" kafka_ok || die "tansu did not answer within 30 s; see $LOGS/kafka.log"
}

start_couchdb() {
    already_running couchdb "$WHISK_COUCHDB_PORT" couch_ok && return 0
    local dir=$WHISK_STACK_DIR/couchdb
    mkdir -p "$dir"
    # pouchdb-server hashes the plaintext admin password at start-up, as CouchDB does.
    printf '{"admins":{"%s":"%s"},"log":{"file":"%s"}}\n' \
        "$WHISK_COUCHDB_USER" "$WHISK_COUCHDB_PASSWORD" "$dir/pouchdb.log" >"$dir/config.json"
    chmod 600 "$dir/config.json"
    log "starting pouchdb-server on 127.0.0.1:$WHISK_COUCHDB_PORT (in memory)"
    spawn couchdb "$dir" "$POUCHDB_BIN" --in-memory --host 127.0.0.1 --port "$WHISK_COUCHDB_PORT" \
        --no-stdout-logs --config "$dir/config.json"
    wait_for 30 "couchdb" couch_ok || die "pouchdb-server did not answer within 30 s; see $LOGS/couchdb.log"
}

# Standalone, in the foreground under spawn (not Debian's service, which would run as its own
# user with data under /var/lib/zookeeper): data in the state dir, no admin server (it would
# take port 8080), `ruok` allowed for the health check.
start_zookeeper() {
    already_running zookeeper "$WHISK_ZOOKEEPER_PORT" zookeeper_ok && return 0
    local dir=$WHISK_STACK_DIR/zookeeper
    mkdir -p "$dir/data"
    printf '%s\n' "tickTime=2000" "dataDir=$dir/data" "clientPort=$WHISK_ZOOKEEPER_PORT" \
        "clientPortAddress=127.0.0.1" "admin.enableServer=false" \
        "4lw.commands.whitelist=ruok,srvr" >"$dir/zoo.cfg"
    log "starting zookeeper on 127.0.0.1:$WHISK_ZOOKEEPER_PORT"
    spawn zookeeper "$dir" java -Dzookeeper.log.dir="$LOGS" -Dzookeeper.root.logger=INFO,CONSOLE \
        -cp /etc/zookeeper/conf:/usr/share/java/zookeeper.jar \
        org.apache.zookeeper.server.quorum.QuorumPeerMain "$dir/zoo.cfg"
    wait_for 60 "zookeeper" zookeeper_ok || die "zookeeper did not answer within 60 s; see $LOGS/zookeeper.log"
}

write_env() {
    mkdir -p "$WHISK_STACK_DIR"
    cat >"$WHISK_STACK_DIR/env" <<EOF
# written by scripts/stack.sh up; read by tests, benchmarks and the quickstart
export WHISK_STACK_DIR='$WHISK_STACK_DIR'
export WHISK_TOOLS_DIR='$WHISK_TOOLS_DIR'
export WHISK_KAFKA_PORT='$WHISK_KAFKA_PORT'
export WHISK_COUCHDB_PORT='$WHISK_COUCHDB_PORT'
export WHISK_COUCHDB_USER='$WHISK_COUCHDB_USER'
export WHISK_COUCHDB_PASSWORD='$WHISK_COUCHDB_PASSWORD'
export KAFKA_HOSTS='127.0.0.1:$WHISK_KAFKA_PORT'
export WHISK_ZOOKEEPER_PORT='$WHISK_ZOOKEEPER_PORT'
export ZOOKEEPER_HOSTS='127.0.0.1:$WHISK_ZOOKEEPER_PORT'
export WHISK_TANSU_BIN='$TANSU_BIN'
export WHISK_OPENWHISK_NODE_PATH='$OPENWHISK_NODE_PATH'
export WHISK_API_PORT='$WHISK_API_PORT'
EOF
    chmod 600 "$WHISK_STACK_DIR/env"
}

# --- stop -------------------------------------------------------------------------------------

stop_one() { # name timeout_s
    local name=$1 timeout=$2 pid deadline
    pid=$(pid_of "$name") || { rm -f "$PIDS/$name.pid"; return 0; }
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + timeout))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name did not exit within ${timeout}s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    # Whatever else ran in its session (dockerd's containerd and shims, say) goes too.
    local rest
    rest=$(ps -eo pid=,sid= | awk -v s="$pid" '$2 == s { print $1 }')
    if [ -n "$rest" ]; then
        log "$name left $(echo "$rest" | wc -w) process(es) in its session; stopping them"
        # shellcheck disable=SC2086
        kill -TERM $rest 2>/dev/null || true
        sleep 2
        rest=$(ps -eo pid=,sid= | awk -v s="$pid" '$2 == s { print $1 }')
        # shellcheck disable=SC2086
        [ -z "$rest" ] || kill -KILL $rest 2>/dev/null || true
    fi
    rm -f "$PIDS/$name.pid"
}

# --- commands ---------------------------------------------------------------------------------

cmd_up() {
    [ "$(id -u)" = 0 ] || die "run as root: the stack starts dockerd and tests create network namespaces"
    mkdir -p "$WHISK_STACK_DIR" "$WHISK_TOOLS_DIR"
    take_lock
    install_base
    install_tansu
    install_pouchdb
    install_openwhisk_client
    install_zookeeper
    start_docker
    start_kafka
    start_couchdb
    start_zookeeper
    # The action runtime images (no registry is reachable): rebuilt only when their inputs change.
    "$REPO/runtimes/build.sh"
    write_env
    cmd_status
}

cmd_docker() {
    [ "$(id -u)" = 0 ] || die "run as root: dockerd runs as root"
    mkdir -p "$WHISK_STACK_DIR"
    take_lock
    start_docker
}

cmd_zookeeper() {
    [ "$(id -u)" = 0 ] || die "run as root: apt installs the zookeeper package"
    mkdir -p "$WHISK_STACK_DIR"
    take_lock
    install_zookeeper
    start_zookeeper
    write_env
}

# The local OpenWhisk path on top of the components: invoker 0 in network mode
# $WHISK_NETWORK_MODE (netns by default: the fastest cold starts, see bench coldstart) and the
# standalone front door on $WHISK_API_PORT (3233). Needs the release build (cargo build --release).
cmd_openwhisk() {
    [ "$(id -u)" = 0 ] || die "run as root: the invoker creates containers and network namespaces"
    local bin=$REPO/target/release
    [ -x "$bin/invoker" ] && [ -x "$bin/standalone" ] ||
        die "build first: cargo build --release --workspace --bins"
    take_lock
    local -a common=(
        env KAFKA_HOSTS="127.0.0.1:$WHISK_KAFKA_PORT" RUNTIMES_MANIFEST="$REPO/runtimes/runtimes.json"
        CONFIG_whisk_couchdb_port="$WHISK_COUCHDB_PORT"
        CONFIG_whisk_couchdb_username="$WHISK_COUCHDB_USER"
        CONFIG_whisk_couchdb_password="$WHISK_COUCHDB_PASSWORD"
    )
    if ! pid_of invoker0 >/dev/null; then
        log "starting invoker 0 (network mode $WHISK_NETWORK_MODE, user memory $WHISK_INVOKER_USER_MEMORY)"
        spawn invoker0 "$WHISK_STACK_DIR" "${common[@]}" PORT="$WHISK_INVOKER_PORT" \
            CONFIG_whisk_containerPool_userMemory="$WHISK_INVOKER_USER_MEMORY" \
            CONFIG_whisk_invoker_network_mode="$WHISK_NETWORK_MODE" \
            CONFIG_whisk_invoker_network_netns_subnet="$WHISK_NETNS_SUBNET" \
            "$bin/invoker" --id 0 --uniqueName 0
    fi
    if ! pid_of standalone >/dev/null; then
        log "starting the front door on port $WHISK_API_PORT"
        spawn standalone "$WHISK_STACK_DIR" "${common[@]}" "$bin/standalone" --port "$WHISK_API_PORT"
    fi
    wait_for 120 "invoker 0 (up at the front door)" invoker_up ||
        die "the front door does not list invoker 0 as up; see $LOGS/invoker0.log and $LOGS/standalone.log"
}

invoker_up() { curl -sf --max-time 5 "http://127.0.0.1:$WHISK_API_PORT/invokers" | grep -q '"invoker0/0":"up"'; }

cmd_down() {
    [ -d "$WHISK_STACK_DIR" ] || return 0
    take_lock
    # The front door first, then the invoker (it drains and removes its containers).
    stop_one standalone 15
    stop_one invoker0 120
    # tansu needs 5-7 s to exit with clients attached (stack-notes §1.2).
    stop_one zookeeper 15
    stop_one couchdb 15
    stop_one kafka 30
    stop_one docker 60
}

ALL_UP=1
status_line() { # name where health-command
    local name=$1 where=$2 who state pid
    shift 2
    if pid=$(pid_of "$name"); then who="started by stack (pid $pid)"; else who="not started by stack"; fi
    if "$@" >/dev/null 2>&1; then state=up; else state=down; ALL_UP=0; fi
    printf '%-8s %-5s %-34s %s\n' "$name" "$state" "$where" "$who"
}

# Exits 1 when a component does not answer.
cmd_status() {
    status_line docker "unix:///var/run/docker.sock" docker_ok
    status_line kafka "127.0.0.1:$WHISK_KAFKA_PORT (tansu $TANSU_VERSION)" kafka_ok
    status_line couchdb "http://127.0.0.1:$WHISK_COUCHDB_PORT (pouchdb)" couch_ok
    status_line zookeeper "127.0.0.1:$WHISK_ZOOKEEPER_PORT" zookeeper_ok
    if pid_of invoker0 >/dev/null || pid_of standalone >/dev/null; then
        status_line invoker0 "port $WHISK_INVOKER_PORT ($WHISK_NETWORK_MODE)" invoker_up
        status_line standalone "http://127.0.0.1:$WHISK_API_PORT (front door)" curl -sf --max-time 5 "http://127.0.0.1:$WHISK_API_PORT/ping"
    fi
    echo "state: $WHISK_STACK_DIR   tools: $WHISK_TOOLS_DIR"
    [ "$ALL_UP" = 1 ]
}

case "${1:-}" in
    up) cmd_up ;;
    zookeeper) cmd_zookeeper ;;
    docker) cmd_docker ;;
    openwhisk) cmd_openwhisk ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) write_env && cat "$WHISK_STACK_DIR/env" ;;
    *) echo "usage: $0 up|zookeeper|docker|openwhisk|down|status|env" >&2; exit 2 ;;
esac
