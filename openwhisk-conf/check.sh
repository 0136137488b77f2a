#!/usr/bin/env bash
# Static checks of the deployment configurations in openwhisk-conf/ (no container is started;
# about a minute once the tools are installed). Run by scripts/test.sh.
#
#   ansible  ansible-lint (production profile) on our playbook and variables; --syntax-check of
#            our playbook; rust-invoker.yml sets only variables upstream reads (upstream-vars.txt)
#   helm     the override's keys are the chart's (chart-keys.txt); our render of the invoker
#            DaemonSet, through post-render.py, passes the Kubernetes 1.31 schema (strict) and
#            has the image, command, privileges and mounts the pools need; post-render.py
#            refuses manifests without an invoker DaemonSet
#   compose  `docker-compose config` of the self-contained file and of the devtools override
#   images   bash -n of the scripts; /init.sh's argument handling against a stub binary
#
# With the upstream sources (apache/openwhisk, openwhisk-deploy-kube, openwhisk-devtools), also:
# --syntax-check of upstream's invoker.yml and openwhisk.yml with rust-invoker.yml, the role's
# variables resolved with it, chart-keys.txt against the chart's values.yaml, and the devtools
# override merged into upstream's compose file. They are found in OPENWHISK_HOME,
# OPENWHISK_DEPLOY_KUBE_HOME and OPENWHISK_DEVTOOLS_HOME (checkouts), else in the mirrors under
# /work/.mirror; without them those checks fail, unless OWC_UPSTREAM=none says to leave them out.
#
# Usage: openwhisk-conf/check.sh
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
BIN=$("$HERE/tools.sh" --compose)
export PATH=$BIN:$PATH
PY=$BIN/python
MIRRORS=${OWC_MIRRORS:-/work/.mirror}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
failures=0
pass() { printf 'ok   - %s\n' "$*"; }
fail() { printf 'FAIL - %s\n' "$*"; failures=$((failures + 1)); }
check() { # description command...
    local what=$1 out
    shift
    if out=$("$@" 2>&1); then pass "$what"; else fail "$what"; printf '%s\n' "$out" | sed 's/^/       /'; fi
}

# An upstream source tree: $1 env var naming a checkout, $2 mirror name, $3 the folder inside
# that the checks read; prints the root of a tree holding $3, or nothing.
upstream() {
    local var=$1 mirror=$MIRRORS/$2/repo path=$3 dir
    # A copy, since the checks write into it.
    dir=$TMP/$2
    mkdir -p "$dir/$(dirname "$path")"
    if [ -n "${!var:-}" ]; then
        [ -e "${!var}/$path" ] && cp -r "${!var}/$path" "$dir/$path"
    elif [ "${OWC_UPSTREAM:-}" != none ] && [ -d "$mirror" ]; then
        git -C "$mirror" archive HEAD "$path" 2>/dev/null | tar -x -C "$dir" 2>/dev/null || true
    fi
    [ -e "$dir/$path" ] && echo "$dir"
    return 0
}
no_upstream() { # what var
    if [ "${OWC_UPSTREAM:-}" = none ]; then
        printf 'note - %s: not run (OWC_UPSTREAM=none)\n' "$1"
    else
        fail "$1: no upstream checkout (set $2, or OWC_UPSTREAM=none to leave it out)"
    fi
}

# --- ansible ----------------------------------------------------------------------------------
A=$HERE/ansible
check "ansible-lint (production profile): openwhisk-conf/ansible" \
    bash -c "cd '$A' && ansible-lint --offline --nocolor -q deploy-invoker.yml rust-invoker.yml"
check "ansible-playbook --syntax-check deploy-invoker.yml" \
    ansible-playbook -i "$A/hosts.ini" --syntax-check "$A/deploy-invoker.yml"
check "rust-invoker.yml sets only the upstream variables of upstream-vars.txt" "$PY" - "$A" <<'EOF'
import sys, yaml
a = sys.argv[1]
known = {l.split("\t")[0] for l in open(f"{a}/upstream-vars.txt") if l.strip() and not l.startswith("#")}
unknown = sorted(set(yaml.safe_load(open(f"{a}/rust-invoker.yml"))) - known)
sys.exit(f"not in upstream-vars.txt: {unknown}" if unknown else 0)
EOF

OW=$(upstream OPENWHISK_HOME apache+openwhisk ansible)
if [ -n "$OW" ]; then
    check "upstream ansible: each variable of upstream-vars.txt is read where it says" \
        bash -c "grep -v '^#' '$A/upstream-vars.txt' | while IFS=\$'\t' read -r var file; do
            grep -q \"\\b\$var\\b\" '$OW/'\"\$file\" || { echo \"\$var is not in \$file\"; exit 1; }; done"
    check "upstream ansible: --syntax-check invoker.yml openwhisk.yml with rust-invoker.yml" \
        bash -c "cd '$OW/ansible' && ansible-playbook -i environments/local/hosts.j2.ini \
            -e @'$A/rust-invoker.yml' --syntax-check invoker.yml openwhisk.yml"
    # The role's own variables (group_vars/all), resolved with ours on top: the image the role
    # runs, the volumes it adds, the environment it merges, the classic SPIs.
    cat >"$OW/ansible/owc-resolve.yml" <<'EOF'
- name: Resolve the invoker role's variables
  hosts: invokers
  gather_facts: true
  gather_subset: [min]
  tasks:
    - name: Compare
      ansible.builtin.assert:
        that:
          - (docker_registry ~ docker.image.prefix ~ '/invoker:' ~ docker.image.tag) == 'whisk/invoker:latest'
          - invoker.docker.volumes == invoker_docker_volumes
          - "'/var/lib/docker/containers:/var/lib/docker/containers:ro' in invoker.docker.volumes"
          - invoker.extraEnv.CONFIG_whisk_invoker_network_mode == 'bridge'
          - not (enable_scheduler | bool)
          - invoker.reactiveSpi == 'org.apache.openwhisk.core.invoker.InvokerReactive'
          - invoker.serverSpi == 'org.apache.openwhisk.core.invoker.DefaultInvokerServer'
          - controller.loadbalancer.spi == 'org.apache.openwhisk.core.loadBalancer.ShardingContainerPoolBalancer'
          - invoker.protocol == 'https'
EOF
    check "upstream ansible: the invoker role's variables resolve to ours (image, volumes, env, SPIs)" \
        bash -c "cd '$OW/ansible' && grep -v '^{%' environments/local/hosts.j2.ini |
            sed 's|ansible_connection=local|ansible_connection=local ansible_python_interpreter=$PY|' >environments/local/owc-hosts.ini && \
            ansible-playbook -i environments/local/owc-hosts.ini -e @'$A/rust-invoker.yml' -e openwhisk_home='$OW' -l invoker0 owc-resolve.yml"
else
    no_upstream "upstream ansible checks" OPENWHISK_HOME
fi

# --- helm -------------------------------------------------------------------------------------
H=$HERE/helm
echo "helm: no helm binary is reachable here (no GitHub, no registry ships it); using our render" \
    "of the invoker DaemonSet, the chart's key list and the Kubernetes schema instead"
check "helm: every key of rust-invoker-values.yaml is one of the chart's (chart-keys.txt)" \
    "$PY" "$H/render.py" check-keys "$H/rust-invoker-values.yaml"
check "helm: a key the chart lacks is refused" bash -c "printf 'invoker:\n  privileged: true\n' >'$TMP/bad.yaml'
    ! '$PY' '$H/render.py' check-keys '$TMP/bad.yaml'"
check "helm: the invoker DaemonSet renders and post-renders" \
    bash -c "'$PY' '$H/render.py' render '$H/rust-invoker-values.yaml' | '$PY' '$H/post-render.py' >'$TMP/invoker.yaml'"
check "helm: the DaemonSet passes the Kubernetes 1.31 schema (kubernetes-validate --strict)" \
    kubernetes-validate --strict -k 1.31.0 "$TMP/invoker.yaml"
check "helm: image, command, privileges and mounts of the invoker pod" "$PY" - "$TMP/invoker.yaml" <<'EOF'
import sys, yaml
ds = yaml.safe_load(open(sys.argv[1]))
pod = ds["spec"]["template"]["spec"]
c = next(c for c in pod["containers"] if c["name"] == "invoker")
mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
env = {e["name"]: e.get("value") for e in c["env"]}
problems = [what for what, ok in [
    ("image openwhisk/invoker:latest", c["image"] == "openwhisk/invoker:latest"),
    ("/init.sh --uniqueName $INVOKER_NAME", c["command"][-1].endswith("/init.sh --uniqueName $INVOKER_NAME")),
    ("hostPID", pod.get("hostPID") is True),
    ("NET_ADMIN and SYS_ADMIN", {"NET_ADMIN", "SYS_ADMIN"} <= set(c["securityContext"]["capabilities"]["add"])),
    ("docker.sock", "/var/run/docker.sock" in mounts),
    ("cgroups", "/sys/fs/cgroup" in mounts),
    ("docker logs at dockerd's path", "/var/lib/docker/containers" in mounts),
    ("the pools' mount folder", "/run/netpool" in mounts),
    ("VM guests", "/opt/whisk-tools/vm" in mounts),
    ("docker container factory", "DockerContainerFactoryProvider" in env["INVOKER_OPTS"]),
    ("network mode", "-Dwhisk.invoker.network.mode=bridge" in env["INVOKER_OPTS"]),
] if not ok]
sys.exit(f"missing: {problems}" if problems else 0)
EOF
check "helm: post-render.py with OWC_PRIVILEGED=1 makes the invoker privileged" \
    bash -c "'$PY' '$H/render.py' render '$H/rust-invoker-values.yaml' | OWC_PRIVILEGED=1 '$PY' '$H/post-render.py' | grep -q 'privileged: true'"
check "helm: post-render.py refuses manifests without an invoker DaemonSet" \
    bash -c "printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n' | { ! '$PY' '$H/post-render.py'; }"
KUBE=$(upstream OPENWHISK_DEPLOY_KUBE_HOME apache+openwhisk-deploy-kube helm/openwhisk)
if [ -n "$KUBE" ]; then
    check "upstream helm: chart-keys.txt matches the chart's values.yaml (paths and defaults)" \
        bash -c "cp -r '$H' '$TMP/helm' && '$PY' '$TMP/helm/render.py' update-keys '$KUBE' x &&
            diff <(grep -v '^#' '$H/chart-keys.txt') <(grep -v '^#' '$TMP/helm/chart-keys.txt')"
    check "upstream helm: the chart's invoker template still has the parts render.py transcribes" \
        bash -c "t='$KUBE/helm/openwhisk/templates'; grep -q '/init.sh --uniqueName \$INVOKER_NAME' \$t/invoker-pod.yaml &&
            grep -q 'kind: DaemonSet' \$t/invoker-pod.yaml && grep -q '/var/lib/docker/containers' \$t/_invoker-helpers.tpl &&
            ! grep -q securityContext \$t/invoker-pod.yaml"
else
    no_upstream "upstream helm checks" OPENWHISK_DEPLOY_KUBE_HOME
fi

# --- compose ----------------------------------------------------------------------------------
C=$HERE/compose
check "compose: docker-compose config of the self-contained docker-compose.yml" \
    docker-compose -p owconf -f "$C/docker-compose.yml" config -q
DT=$(upstream OPENWHISK_DEVTOOLS_HOME apache+openwhisk-devtools docker-compose)
if [ -n "$DT" ]; then
    # Upstream's file reads ~/tmp/openwhisk/local.env, written by its `make setup`.
    mkdir -p "$TMP/home/tmp/openwhisk"
    touch "$TMP/home/tmp/openwhisk/local.env"
    check "upstream compose: devtools-override.yml merges into openwhisk-devtools' docker-compose.yml" \
        bash -c "cd '$DT/docker-compose' && HOME='$TMP/home' docker-compose -f docker-compose.yml \
            -f '$C/devtools-override.yml' config >'$TMP/devtools.yml'"
    check "upstream compose: the merged invoker runs our image with upstream's command and mounts" "$PY" - "$TMP/devtools.yml" <<'EOF'
import sys, yaml
s = yaml.safe_load(open(sys.argv[1]))["services"]
inv, ctl = s["invoker"], s["controller"]
vols = {v["target"] if isinstance(v, dict) else v.split(":")[1] for v in inv["volumes"]}
problems = [what for what, ok in [
    ("image", inv["image"] == "openwhisk/invoker:latest"),
    ("command", "/init.sh --id 0" in inv["command"]),
    ("privileged", inv.get("privileged") is True),
    ("mounts", {"/var/run/docker.sock", "/containers", "/sys/fs/cgroup", "/var/lib/docker/containers", "/opt/whisk-tools/vm"} <= vols),
    ("controller SPI", ctl["environment"]["CONFIG_whisk_spi_LoadBalancerProvider"].endswith("ShardingContainerPoolBalancer")),
] if not ok]
sys.exit(f"wrong: {problems}" if problems else 0)
EOF
else
    no_upstream "upstream compose checks" OPENWHISK_DEVTOOLS_HOME
fi

# --- images -----------------------------------------------------------------------------------
check "images: bash -n of the build and entry scripts" \
    bash -c "for f in '$REPO/images/build.sh' '$REPO/images/invoker/init.sh' '$HERE/deploy-test.sh' '$HERE/tools.sh'; do bash -n \"\$f\" || exit 1; done; sh -n '$REPO/images/pouchdb/start.sh'"
printf '#!/bin/sh\nprintf "%%s|" "$@"\n' >"$TMP/stub"
chmod +x "$TMP/stub"
init() { OWC_INIT_INVOKER=$TMP/stub "$REPO/images/invoker/init.sh" "$@"; }
check "images: /init.sh passes --id/--uniqueName/--displayedName/--overwriteId on" \
    bash -c "$(declare -f init); TMP='$TMP' REPO='$REPO'
        [ \"\$(init --id 3 --uniqueName 3)\" = '--id|3|--uniqueName|3|' ] &&
        [ \"\$(init --uniqueName node-a --displayedName a --overwriteId 7)\" = '--uniqueName|node-a|--displayedName|a|--overwriteId|7|' ] &&
        [ \"\$(init --id=0)\" = '--id=0|' ]"
check "images: /init.sh refuses positional and unknown arguments, and neither --id nor --uniqueName" \
    bash -c "$(declare -f init); TMP='$TMP' REPO='$REPO'
        ! init 0 2>/dev/null && ! init --id 0 --bogus 2>/dev/null && ! init --displayedName x 2>/dev/null && ! init --id 2>/dev/null"

if [ "$failures" -gt 0 ]; then
    echo "openwhisk-conf/check.sh: $failures check(s) failed"
    exit 1
fi
echo "openwhisk-conf/check.sh: all checks passed"
