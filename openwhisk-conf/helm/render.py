#!/usr/bin/env python3
"""The helm checks of check.sh, for a machine without a helm binary.

  render.py check-keys VALUES.yaml...   every key the files set is one of the chart's
                                        (chart-keys.txt); names the first one that is not
  render.py render VALUES.yaml...       prints the invoker DaemonSet the chart renders for the
                                        chart defaults in chart-keys.txt overridden by the files
  render.py update-keys CHECKOUT [COMMIT]
                                        rewrites chart-keys.txt from an openwhisk-deploy-kube
                                        checkout (the same key paths, new defaults and commit)

`render` is our transcription of the chart's templates/invoker-pod.yaml and
_invoker-helpers.tpl for invoker.containerFactory.impl=docker (the only factory the Rust invoker
implements), at the commit chart-keys.txt names: the same pod shape, image, command, volumes,
mounts and environment names, the values taken from the merged values. What the chart fills
from other templates (the runtimes manifest, the database, Kafka and ZooKeeper addresses, the
limits, the init container that waits for the controller, affinity and tolerations) is left
out or a placeholder: they do not depend on the values this override sets. It is a stand-in
for `helm template`, not a replacement; with helm at hand, render the chart itself.
"""

import json
import os
import subprocess
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
KEYS_FILE = os.path.join(HERE, "chart-keys.txt")
RELEASE = "owdev"
HEADER = """\
# The keys of apache/openwhisk-deploy-kube's helm/openwhisk/values.yaml that rust-invoker-values.yaml
# sets and render.py reads, with the chart's defaults (as JSON), at upstream commit
# {commit}. Only these paths, not the chart's file.
# Regenerate from another chart version: render.py update-keys <openwhisk-deploy-kube checkout>.
"""


class RenderError(Exception):
    """The values cannot be checked or rendered."""


def chart_keys():
    """The chart's key paths we rely on, with their defaults: {path: default}."""
    keys = {}
    with open(KEYS_FILE, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            path, default = line.rstrip("\n").split("\t", 1)
            keys[path] = json.loads(default)
    return keys


def leaves(tree, prefix=""):
    """(dotted path, value) of every leaf of a nested mapping."""
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            yield from leaves(value, path)
        else:
            yield path, value


def load_values(files):
    """The leaves of the values files, later files winning, as helm merges -f files."""
    merged = {}
    for name in files:
        with open(name, encoding="utf-8") as f:
            tree = yaml.safe_load(f) or {}
        if not isinstance(tree, dict):
            raise RenderError(f"{name}: the values are not a mapping")
        merged.update(dict(leaves(tree)))
    return merged


def check_keys(files):
    keys = chart_keys()
    for path, value in load_values(files).items():
        if path not in keys:
            raise RenderError(f"{path} is not one of the chart's values (chart-keys.txt)")
        default = keys[path]
        if default is not None and value is not None and type(value) is not type(default):
            raise RenderError(
                f"{path} is a {type(value).__name__}; the chart's default is a {type(default).__name__}"
            )


def values(files):
    merged = chart_keys()
    merged.update(load_values(files))
    return merged


def env(name, value):
    return {"name": name, "value": str(value)}


def render(files):
    """The invoker DaemonSet, as templates/invoker-pod.yaml renders it (see the module doc)."""
    v = values(files)
    if v["invoker.containerFactory.impl"] != "docker":
        raise RenderError("invoker.containerFactory.impl must be docker for the Rust invoker")
    dns_inherit = v["invoker.containerFactory.networkConfig.dns.inheritInvokerConfig"]
    launch = "/init.sh --uniqueName $INVOKER_NAME"
    if dns_inherit:
        launch = ". /invoker-scripts/configureDNS.sh && " + launch
    registry = v["docker.registry.name"]
    labels = {"name": f"{RELEASE}-invoker", "app": f"{RELEASE}-openwhisk", "release": RELEASE}
    environment = [
        env("PORT", v["invoker.port"]),
        env("WHISK_API_HOST_PROTO", "https"),
        env("WHISK_API_HOST_PORT", "31001"),
        env("WHISK_API_HOST_NAME", "owdev.example"),
        env("CONFIG_whisk_docker_containerFactory_useRunc", str(v["invoker.containerFactory.useRunc"]).lower()),
        env("CONFIG_whisk_containerPool_userMemory", v["whisk.containerPool.userMemory"]),
        env("CONFIG_whisk_containerFactory_containerArgs_network", v["invoker.containerFactory.networkConfig.name"]),
        env("CONFIG_whisk_containerFactory_containerArgs_extraEnvVars_0",
            f"__OW_ALLOW_CONCURRENT={str(v['invoker.containerFactory.enableConcurrency']).lower()}"),
        env("CONFIG_whisk_containerFactory_runtimesRegistry_url", registry),
        {"name": "INVOKER_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        env("JAVA_OPTS", f"-Xmx{v['invoker.jvmHeapMB']}M {v['invoker.jvmOptions']}"),
        env("INVOKER_OPTS", v["invoker.options"] + " -Dwhisk.spi.ContainerFactoryProvider="
            "org.apache.openwhisk.core.containerpool.docker.DockerContainerFactoryProvider"),
        env("RUNTIMES_MANIFEST", "{}"),
        env("WHISK_LOGS_DIR", ""),
        env("KAFKA_HOSTS", f"{RELEASE}-kafka.openwhisk.svc.cluster.local:9092"),
        env("ZOOKEEPER_HOSTS", f"{RELEASE}-zookeeper-0.{RELEASE}-zookeeper.openwhisk.svc.cluster.local:2181"),
        env("CONFIG_logback_log_level", v["invoker.loglevel"]),
        env("CONFIG_whisk_helm_release", RELEASE),
        env("CONFIG_akka_coordinatedShutdown_phases_actorSystemTerminate_timeout",
            v["akka.actorSystemTerminateTimeout"]),
        env("CONFIG_whisk_runtime_delete_timeout", v["invoker.runtimeDeleteTimeout"]),
    ]
    if v["scheduler.enabled"]:
        raise RenderError("scheduler.enabled selects the FPC invoker; the Rust invoker is the classic one")
    mounts = [
        {"name": "cgroup", "mountPath": "/sys/fs/cgroup"},
        {"name": "runc", "mountPath": "/run/runc"},
        {"name": "dockersock", "mountPath": "/var/run/docker.sock"},
        {"name": "dockerrootdir", "mountPath": "/containers"},
    ]
    if dns_inherit:
        mounts.append({"name": "scripts-dir", "mountPath": "/invoker-scripts/configureDNS.sh",
                       "subPath": "configureDNS.sh"})
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": f"{RELEASE}-invoker", "labels": labels},
        "spec": {
            "selector": {"matchLabels": {"name": f"{RELEASE}-invoker"}},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "restartPolicy": v["invoker.restartPolicy"],
                    "volumes": [
                        {"name": "cgroup", "hostPath": {"path": "/sys/fs/cgroup"}},
                        {"name": "runc", "hostPath": {"path": "/run/runc"}},
                        {"name": "dockerrootdir", "hostPath": {"path": "/var/lib/docker/containers"}},
                        {"name": "dockersock", "hostPath": {"path": "/var/run/docker.sock"}},
                        {"name": "scripts-dir", "configMap": {"name": f"{RELEASE}-invoker-scripts"}},
                    ],
                    "initContainers": [{
                        "name": "docker-pull-runtimes",
                        "image": f"{registry}{v['utility.imageName']}:{v['utility.imageTag']}",
                        "imagePullPolicy": v["utility.imagePullPolicy"],
                        "command": ["/usr/local/bin/ansible-playbook", "/invoker-scripts/playbook.yml"],
                        "volumeMounts": [
                            {"name": "dockersock", "mountPath": "/var/run/docker.sock"},
                            {"name": "scripts-dir", "mountPath": "/invoker-scripts/playbook.yml",
                             "subPath": "playbook.yml"},
                        ],
                        "env": [env("RUNTIMES_MANIFEST", "{}")],
                    }],
                    "containers": [{
                        "name": "invoker",
                        "image": f"{registry}{v['invoker.imageName']}:{v['invoker.imageTag']}",
                        "imagePullPolicy": v["invoker.imagePullPolicy"],
                        "command": ["/bin/bash", "-c", launch],
                        "env": environment,
                        "ports": [{"name": "invoker", "containerPort": v["invoker.port"]}],
                        "volumeMounts": mounts,
                    }],
                },
            },
        },
    }


def update_keys(checkout, commit=None):
    path = os.path.join(checkout, "helm", "openwhisk", "values.yaml")
    with open(path, encoding="utf-8") as f:
        chart = dict(leaves(yaml.safe_load(f)))
    if commit is None:
        commit = subprocess.run(["git", "-C", checkout, "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
    if not commit:
        raise RenderError(f"{checkout} is not a git checkout; name its commit after it")
    lines = [HEADER.format(commit=commit)]
    for key in chart_keys():
        if key not in chart:
            raise RenderError(f"{key} is no longer in {path}")
        lines.append(f"{key}\t{json.dumps(chart[key])}\n")
    with open(KEYS_FILE, "w", encoding="utf-8") as f:
        f.writelines(lines)


def main(argv):
    if len(argv) < 2 or argv[0] not in ("check-keys", "render", "update-keys"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        if argv[0] == "check-keys":
            check_keys(argv[1:])
        elif argv[0] == "render":
            yaml.safe_dump(render(argv[1:]), sys.stdout, sort_keys=False)
        else:
            update_keys(argv[1], argv[2] if len(argv) > 2 else None)
    except (RenderError, OSError, yaml.YAMLError) as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
