#!/usr/bin/env bash
# Runs every test: brings the local stack up (installing what is missing), checks formatting
# and lints, then runs the whole workspace's tests against the real components.
# Components this script started are stopped again at the end; set WHISK_KEEP_STACK=1 to keep
# them. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${WHISK_STACK_DIR:=$PWD/.stack}"
export WHISK_STACK_DIR

ours_before=$(ls "$WHISK_STACK_DIR"/pids/*.pid 2>/dev/null | wc -l || true)
stop_stack() {
    local rc=$?
    if [ "$ours_before" = 0 ] && [ "${WHISK_KEEP_STACK:-0}" != 1 ]; then
        scripts/stack.sh down || rc=1
    fi
    exit $rc
}
trap stop_stack EXIT

scripts/stack.sh up
# shellcheck source=/dev/null
source "$WHISK_STACK_DIR/env"

echo "== cargo fmt --check"
cargo fmt --all --check
cargo fmt --all --check --manifest-path unikernel/Cargo.toml
cargo fmt --all --check --manifest-path fuzz/Cargo.toml
cargo fmt --all --check --manifest-path openwhisk-conf/tools/wat2wasm/Cargo.toml
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# One package at a time: built together, the runtime's std dev-dependencies would unify std
# features into the kernel's no_std dependencies.
for pkg in wasm-action wasm-unikernel; do
    cargo clippy -p "$pkg" --all-targets --locked --manifest-path unikernel/Cargo.toml -- -D warnings
done
cargo clippy --manifest-path fuzz/Cargo.toml --all-targets --locked -- -D warnings
cargo clippy --manifest-path openwhisk-conf/tools/wat2wasm/Cargo.toml --target-dir target/owconf-tools --all-targets --locked -- -D warnings
echo "== the unikernel (its own workspace: the wasm runtime on the host, the kernel under QEMU)"
for pkg in wasm-action wasm-unikernel; do
    cargo test -p "$pkg" --locked --manifest-path unikernel/Cargo.toml --no-fail-fast
done
echo "== cargo test"
cargo test --workspace --locked --no-fail-fast
echo "== netpool: 1100 slots over two bridges (ignored by default: heavy)"
cargo test --workspace --locked --test kernel -- --ignored --exact eleven_hundred_slots_over_two_bridges
for mode in pcpm netns vm; do
    echo "== invoker end to end, network mode $mode (the workspace run above used bridge)"
    INVOKER_E2E_NETWORK_MODE=$mode cargo test --locked -p invoker --test invoker_e2e
done
# Alone and one at a time: these restart dockerd and the broker and drain the pools.
echo "== the fault suite (invoker/tests/faults.rs), in every network mode"
for mode in bridge pcpm netns vm; do
    skip=()
    # The broker's restart does not depend on the network mode: once, in bridge mode.
    [ "$mode" = bridge ] || skip+=(--skip a_broker_restarted)
    # vm mode's VMs use nothing of Docker's once the invoker is up.
    [ "$mode" = vm ] && skip+=(--skip a_dockerd_restart)
    INVOKER_E2E_NETWORK_MODE=$mode cargo test --locked -p invoker --test faults -- \
        --ignored --test-threads=1 "${skip[@]}"
done
echo "== deployment configs: static checks (ansible-lint, --syntax-check, helm keys and schema, compose config)"
# The checks against upstream's sources (apache/openwhisk, openwhisk-deploy-kube,
# openwhisk-devtools) need checkouts of them: OPENWHISK_HOME and friends, or the mirrors.
if [ -z "${OPENWHISK_HOME:-}" ] && [ ! -d "${OWC_MIRRORS:-/work/.mirror}/apache+openwhisk/repo" ]; then
    echo "note: no checkout of apache/openwhisk here (no OPENWHISK_HOME, no mirror): the checks against upstream's sources are left out (OWC_UPSTREAM=none)"
    export OWC_UPSTREAM=none
fi
openwhisk-conf/check.sh
echo "== deployment configs live: the ansible playbook, the compose file (npm e2e), helm's command line against ZooKeeper"
openwhisk-conf/deploy-test.sh
echo "== fuzzing: every target for 15 s from the committed corpus (the campaign: scripts/fuzz.sh campaign)"
scripts/fuzz.sh smoke 15
