#!/usr/bin/env bash
# Fuzzes the decoders that take outside input (fuzz/fuzz_targets, cargo-fuzz + libFuzzer):
#
#   scripts/fuzz.sh build              builds every target (installs cargo-fuzz if missing)
#   scripts/fuzz.sh smoke [SECONDS]    each target for SECONDS (default 20) from the committed
#                                      corpus; any crash, panic, hang or OOM fails. CI runs this.
#   scripts/fuzz.sh campaign [RUNS] [TARGET...]
#                                      each target (default all) for RUNS executions (default
#                                      10,000,000); new inputs that add coverage are merged into
#                                      fuzz/corpus/<target>, and fuzz/results/<target>.json
#                                      records runs, time, rate, corpus size and the machine.
#
# The toolchain is the stable one: RUSTC_BOOTSTRAP=1 lets it take the -Z flags cargo-fuzz passes
# (no nightly is downloadable here). FUZZ_SANITIZER (default `none`) picks the sanitizer:
# every target is safe Rust, so libFuzzer's own checks (panics, aborts, timeouts, the RSS limit)
# find what can go wrong; `address` adds ASan at about half the speed.
# A finding is written to fuzz/artifacts/<target>/ and reproduced with
# `fuzz/target/x86_64-unknown-linux-gnu/release/<target> <file>`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${WHISK_TOOLS_DIR:=/opt/whisk-tools}"
: "${FUZZ_SANITIZER:=none}"
export PATH="$WHISK_TOOLS_DIR/cargo-fuzz/bin:$PATH" RUSTC_BOOTSTRAP=1
CARGO_FUZZ_VERSION=0.13.2
TARGETS=(activation_message kafka_messages action_document invoker_settings proxy_http)
BIN=fuzz/target/x86_64-unknown-linux-gnu/release
log() { printf '[fuzz] %s\n' "$*" >&2; }

# Per-input time bound (s) and memory bound (MB): a decoder spending more on one input is a
# finding.
LIMITS=(-timeout=10 -rss_limit_mb=2048 -max_len=8192 -close_fd_mask=3 -print_final_stats=1)

install_cargo_fuzz() {
    if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
        log "installing cargo-fuzz $CARGO_FUZZ_VERSION into $WHISK_TOOLS_DIR/cargo-fuzz"
        cargo install --quiet --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION" \
            --root "$WHISK_TOOLS_DIR/cargo-fuzz"
    fi
}

build() {
    install_cargo_fuzz
    log "building ${TARGETS[*]} (sanitizer: $FUZZ_SANITIZER)"
    cargo fuzz build -O --debug-assertions --sanitizer "$FUZZ_SANITIZER" >&2
}

# Runs target $1 with the extra libFuzzer flags in $2...; new inputs go to $scratch/$1, the
# committed corpus is read only. Prints libFuzzer's final stats.
run_target() {
    local t=$1
    shift
    mkdir -p "$scratch/$t" "fuzz/artifacts/$t"
    "$BIN/$t" "${LIMITS[@]}" "$@" -artifact_prefix="fuzz/artifacts/$t/" \
        "$scratch/$t" "fuzz/corpus/$t" 2>"$scratch/$t.log"
}

stat() { sed -n "s/^stat::$1: *//p" "$2" | tail -1; }

scratch=$(mktemp -d /tmp/whisk-fuzz.XXXXXX)
trap 'rm -rf "$scratch" /dev/shm/whisk-fuzz-*' EXIT

cmd=${1:-smoke}
case $cmd in
build)
    build
    ;;
smoke)
    secs=${2:-20}
    build
    failed=0
    for t in "${TARGETS[@]}"; do
        if run_target "$t" -max_total_time="$secs"; then
            log "$t: $(stat number_of_executed_units "$scratch/$t.log") runs in ${secs} s, no finding"
        else
            log "$t: FINDING (fuzz/artifacts/$t/):"
            grep -E 'ERROR|panicked|SUMMARY|^Test unit written' "$scratch/$t.log" | head -20 >&2 || true
            failed=1
        fi
    done
    exit $failed
    ;;
campaign)
    runs=${2:-10000000}
    shift $(($# < 2 ? $# : 2))
    [ $# -gt 0 ] && TARGETS=("$@")
    build
    mkdir -p fuzz/results
    commit=$(git rev-parse --short HEAD)
    # Uncommitted changes to the fuzzed sources (the corpus is not code: it changes by design).
    dirty=$(git status --porcelain -- fuzz/fuzz_targets fuzz/Cargo.toml openwhisk/src runtimes/proxy/src | grep -c . || true)
    cpu=$(sed -n 's/^model name\t*: //p' /proc/cpuinfo | head -1)
    for t in "${TARGETS[@]}"; do
        log "$t: $runs runs"
        start=$(date +%s)
        rc=0
        run_target "$t" -runs="$runs" || rc=$?
        secs=$(($(date +%s) - start))
        done_runs=$(stat number_of_executed_units "$scratch/$t.log")
        before=$(find "fuzz/corpus/$t" -type f | wc -l)
        # The corpus kept: a smallest set of inputs that covers every feature of the old corpus
        # and the new inputs together.
        mkdir -p "$scratch/$t.min"
        "$BIN/$t" -set_cover_merge=1 "${LIMITS[@]}" "$scratch/$t.min" "fuzz/corpus/$t" "$scratch/$t" \
            2>"$scratch/$t.merge.log"
        rm -rf "fuzz/corpus/$t" && mv "$scratch/$t.min" "fuzz/corpus/$t"
        after=$(find "fuzz/corpus/$t" -type f | wc -l)
        findings=$(find "fuzz/artifacts/$t" -type f | wc -l)
        cov=$(sed -n 's/.* cov: \([0-9]*\) .*/\1/p' "$scratch/$t.log" | tail -1)
        ft=$(sed -n 's/.* ft: \([0-9]*\) .*/\1/p' "$scratch/$t.log" | tail -1)
        cat >"fuzz/results/$t.json" <<EOF
{
  "target": "$t",
  "runs": ${done_runs:-0},
  "seconds": $secs,
  "runs_per_second": $(( ${done_runs:-0} / (secs > 0 ? secs : 1) )),
  "exit_code": $rc,
  "findings": $findings,
  "corpus_files_before": $before,
  "corpus_files_after": $after,
  "coverage_edges": ${cov:-0},
  "coverage_features": ${ft:-0},
  "sanitizer": "$FUZZ_SANITIZER",
  "limits": "${LIMITS[*]}",
  "commit": "$commit",
  "uncommitted_changes_in_fuzzed_code": $dirty,
  "date": "$(date -u +%FT%TZ)",
  "machine": {"cpu": "$cpu", "cores": $(nproc), "memory_gib": $(( $(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo) / 1048576 )), "kernel": "$(uname -r)", "rustc": "$(rustc --version)"}
}
EOF
        log "$t: ${done_runs:-0} runs in ${secs} s, exit $rc, $findings finding(s), corpus $before -> $after"
        [ "$rc" = 0 ] || { grep -E 'ERROR|panicked|SUMMARY' "$scratch/$t.log" | head -20 >&2; exit 1; }
    done
    ;;
*)
    echo "usage: scripts/fuzz.sh build | smoke [SECONDS] | campaign [RUNS] [TARGET...]" >&2
    exit 2
    ;;
esac
