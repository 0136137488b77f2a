#!/usr/bin/env python3
"""Helm post-renderer: gives the chart's invoker DaemonSet what the Rust invoker's pools need.

apache/openwhisk-deploy-kube's chart has no values for the invoker pod's security context or
for extra volumes, so rust-invoker-values.yaml cannot add them; helm runs this program on the
rendered manifests instead (`helm install ... --post-renderer openwhisk-conf/helm/post-render.py`).
It reads every manifest on stdin, changes only the DaemonSet whose pod has a container named
`invoker`, and writes all of them to stdout:

- `hostPID: true`: pcpm mode opens the network namespace of each pause container through
  /proc/<pid>/ns/net, a host pid (ansible and compose run the invoker with `pid: host` too);
- capabilities NET_ADMIN (veths, bridges, addresses, routes, tc in the pool's namespaces) and
  SYS_ADMIN (creating and bind-mounting network namespaces, cgroups of VM guests);
  `OWC_PRIVILEGED=1` makes the container privileged instead, for nodes whose AppArmor or
  seccomp profile refuses mount(2) even with SYS_ADMIN, and for the VM backend (wasm:0.1 and
  sandbox: vm actions), whose TAP devices need /dev/net/tun, which Kubernetes gives only a
  privileged container;
- volumes: the node's Docker json-file logs at the path dockerd reports (the invoker tails them
  there; the chart mounts them at /containers only), the VM guests of runtimes/build.sh
  (/opt/whisk-tools/vm, read-only), the runc backend's folder with its image store
  (/var/lib/wsk-invoker), and an in-memory emptyDir on /run/netpool, the pools' mount folder,
  so the namespaces live and die with the pod.

Needs PyYAML. Exits non-zero, writing nothing, when no invoker DaemonSet is in the input
(the values did not select invoker.containerFactory.impl=docker).
"""

import os
import sys

import yaml

CAPABILITIES = ["NET_ADMIN", "SYS_ADMIN"]

# (name, volume source, mount path, read-only)
VOLUMES = [
    ("dockercontainers", {"hostPath": {"path": "/var/lib/docker/containers"}},
     "/var/lib/docker/containers", True),
    ("vmguests", {"hostPath": {"path": "/opt/whisk-tools/vm"}}, "/opt/whisk-tools/vm", True),
    ("wskinvoker", {"hostPath": {"path": "/var/lib/wsk-invoker", "type": "DirectoryOrCreate"}},
     "/var/lib/wsk-invoker", False),
    ("netpool", {"emptyDir": {"medium": "Memory"}}, "/run/netpool", False),
]


class PostRenderError(Exception):
    """The manifests cannot be changed as this program promises."""


def invoker_container(doc):
    """The container named `invoker` of a DaemonSet's pod template, or None."""
    if not isinstance(doc, dict) or doc.get("kind") != "DaemonSet":
        return None
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    for container in pod.get("containers", []):
        if container.get("name") == "invoker":
            return container
    return None


def patch(doc, privileged):
    """Adds the pod and container settings above to one invoker DaemonSet, in place."""
    pod = doc["spec"]["template"]["spec"]
    container = invoker_container(doc)
    pod["hostPID"] = True
    security = container.setdefault("securityContext", {})
    if privileged:
        security["privileged"] = True
    else:
        caps = security.setdefault("capabilities", {}).setdefault("add", [])
        caps.extend(c for c in CAPABILITIES if c not in caps)
    volumes = pod.setdefault("volumes", [])
    mounts = container.setdefault("volumeMounts", [])
    taken = {v["name"] for v in volumes}
    for name, source, path, read_only in VOLUMES:
        if name in taken:
            raise PostRenderError(f"the invoker pod already has a volume named {name}")
        volumes.append({"name": name, **source})
        mount = {"name": name, "mountPath": path}
        if read_only:
            mount["readOnly"] = True
        mounts.append(mount)


def post_render(text, privileged=False):
    """The manifests in `text` with every invoker DaemonSet patched, as one YAML stream."""
    docs = list(yaml.safe_load_all(text))
    patched = 0
    for doc in docs:
        if invoker_container(doc) is not None:
            patch(doc, privileged)
            patched += 1
    if patched == 0:
        raise PostRenderError(
            "no DaemonSet with an invoker container in the manifests "
            "(set invoker.containerFactory.impl=docker, as rust-invoker-values.yaml does)"
        )
    return yaml.safe_dump_all([d for d in docs if d is not None], sort_keys=False)


def main():
    try:
        out = post_render(sys.stdin.read(), os.environ.get("OWC_PRIVILEGED") == "1")
    except (PostRenderError, yaml.YAMLError) as e:
        print(f"post-render: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
