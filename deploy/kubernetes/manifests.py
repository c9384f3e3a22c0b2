#!/usr/bin/env python3
"""Render and check the kustomizations of this folder, offline.

It owns three checks, and nothing else (validate.sh calls it):

- every kustomization (base, overlays/*) renders: with `kubectl kustomize` when kubectl
  is installed, else with the small renderer below, which knows only the subset these
  manifests use (resources, namespace, JSON 6902 patches with a kind/name target and
  allowKindChange) and refuses anything else. Where kubectl is there, both render and
  must agree, so the fallback cannot drift from what kubectl does;
- every object is valid for the pinned Kubernetes version, strictly (an unknown field
  is an error), by the `kubernetes-validate` package;
- each workload's grace period covers its preStop sleep, the ConfigMap's
  shutdown-grace-ms and a margin, its probes point at the health port, no mount uses
  subPath, and the config's cache-dir is a folder inside an emptyDir, not the
  emptyDir's own top (which the kubelet makes writable by all, so that sandport would
  not trust the compiled code in it).

It never talks to a cluster.
"""

import argparse
import copy
import math
import os
import re
import shutil
import subprocess
import sys

import kubernetes_validate
import yaml

# Seconds between the end of shutdown-grace-ms and the kubelet's SIGKILL: what the
# process needs to close what is left and exit.
MARGIN = 5

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "namespace", "patches"}
# Kinds that live in no namespace, which the namespace setting leaves alone.
CLUSTER_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding"}


def load_all(path):
    with open(path) as file:
        return [doc for doc in yaml.safe_load_all(file) if doc is not None]


def render(folder):
    """The objects a kustomization folder stands for, as the subset it uses says."""
    (kustomization,) = load_all(os.path.join(folder, "kustomization.yaml"))
    unknown = set(kustomization) - KUSTOMIZATION_KEYS
    if unknown:
        raise SystemExit(f"{folder}: the offline renderer does not know {sorted(unknown)}: render with kubectl")
    objects = []
    for resource in kustomization.get("resources", []):
        path = os.path.normpath(os.path.join(folder, resource))
        objects += render(path) if os.path.isdir(path) else load_all(path)
    for patch in kustomization.get("patches", []):
        apply_patch(folder, objects, patch)
    namespace = kustomization.get("namespace")
    if namespace:
        for obj in objects:
            if obj["kind"] not in CLUSTER_KINDS:
                obj.setdefault("metadata", {})["namespace"] = namespace
    return objects


def apply_patch(folder, objects, patch):
    unknown = set(patch) - {"target", "patch", "options"}
    target = patch.get("target", {})
    if unknown or set(target) - {"kind", "name"} or set(patch.get("options", {})) - {"allowKindChange"}:
        raise SystemExit(f"{folder}: a patch the offline renderer does not know: {patch}")
    operations = yaml.safe_load(patch["patch"])
    if not isinstance(operations, list):
        raise SystemExit(f"{folder}: only JSON 6902 patches (a list of operations) are rendered offline")
    matched = [
        obj
        for obj in objects
        if obj["kind"] == target.get("kind", obj["kind"])
        and obj["metadata"]["name"] == target.get("name", obj["metadata"]["name"])
    ]
    if not matched:
        raise SystemExit(f"{folder}: patch target {target} matches nothing")
    for obj in matched:
        kind = obj["kind"]
        for operation in operations:
            json_patch(obj, operation)
        if obj["kind"] != kind and not patch.get("options", {}).get("allowKindChange"):
            raise SystemExit(f"{folder}: a patch changes {kind} to {obj['kind']} without allowKindChange")


def json_patch(obj, operation):
    """One RFC 6902 operation: add, replace or remove."""
    op, path = operation["op"], operation["path"]
    keys = [key.replace("~1", "/").replace("~0", "~") for key in path.lstrip("/").split("/")]
    parent = obj
    for key in keys[:-1]:
        parent = parent[int(key)] if isinstance(parent, list) else parent[key]
    last = keys[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if op == "add":
            parent.insert(index, copy.deepcopy(operation["value"]))
        elif op == "replace":
            parent[index] = copy.deepcopy(operation["value"])
        elif op == "remove":
            del parent[index]
        else:
            raise SystemExit(f"JSON patch operation {op} is not rendered offline")
    elif op == "add" or (op == "replace" and last in parent):
        parent[last] = copy.deepcopy(operation["value"])
    elif op == "remove" and last in parent:
        del parent[last]
    else:
        raise SystemExit(f"JSON patch: cannot {op} {path}")


def kubectl_render(kubectl, folder):
    output = subprocess.run([kubectl, "kustomize", folder], check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc is not None]


def by_identity(objects):
    return {(obj["kind"], obj["metadata"]["name"]): obj for obj in objects}


def config_text(objects, name):
    """The sandport.toml of the ConfigMap `name`."""
    configs = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name]
    if not configs:
        raise ValueError(f"no ConfigMap {name} among the objects")
    return configs[0]["data"]["sandport.toml"]


def top_level(text, key):
    """A top-level key's value as written (before the first table), or None."""
    head = re.split(r"^\[", text, maxsplit=1, flags=re.MULTILINE)[0]
    match = re.search(rf"^{re.escape(key)}\s*=\s*([^#\n]+)", head, re.MULTILINE)
    return match.group(1).strip() if match else None


def shutdown_grace_seconds(text):
    """shutdown-grace-ms of a sandport.toml, in whole seconds (sandport's default: 5)."""
    value = top_level(text, "shutdown-grace-ms")
    return math.ceil(int(value) / 1000) if value else 5


def check_workload(obj, objects):
    """Problems with a workload's grace period and probes, as sentences."""
    problems = []
    pod = obj["spec"]["template"]["spec"]
    config = next((v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v), None)
    if config is None:
        return [f"{obj['kind']} {obj['metadata']['name']}: no ConfigMap volume (mounted as a folder)"]
    text = config_text(objects, config)
    grace = shutdown_grace_seconds(text)
    cache_dir = (top_level(text, "cache-dir") or "").strip('"')
    empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    period = pod.get("terminationGracePeriodSeconds", 30)
    for container in pod["containers"]:
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        need = pre_stop + grace + MARGIN
        if period < need:
            problems.append(
                f"{obj['kind']} {obj['metadata']['name']}: terminationGracePeriodSeconds {period} is less than "
                f"preStop {pre_stop} s + shutdown-grace-ms {grace} s + {MARGIN} s margin = {need}"
            )
        for mount in container.get("volumeMounts", []):
            if "subPath" in mount or "subPathExpr" in mount:
                problems.append(f"{container['name']}: mount {mount['name']} uses subPath, which never refreshes")
            if mount["name"] in empty_dirs and os.path.normpath(mount["mountPath"]) == os.path.normpath(cache_dir):
                problems.append(
                    f"{container['name']}: cache-dir {cache_dir} is the top of emptyDir {mount['name']}, which is "
                    "writable by all: sandport would not trust compiled code there; name a folder inside it"
                )
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = container.get(probe, {}).get("httpGet", {})
            if get.get("path") != path:
                problems.append(f"{container['name']}: {probe} is not an HTTP GET of {path}")
    return problems


def folders(root):
    found = [os.path.join(root, "base")]
    overlays = os.path.join(root, "overlays")
    if os.path.isdir(overlays):
        found += [os.path.join(overlays, name) for name in sorted(os.listdir(overlays))]
    return [folder for folder in found if os.path.isfile(os.path.join(folder, "kustomization.yaml"))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="the folder with base/ and overlays/")
    parser.add_argument("--kubernetes-version", required=True)
    args = parser.parse_args()
    # KUBECTL names the kubectl to render with; set empty, the offline renderer alone.
    kubectl = os.environ.get("KUBECTL", shutil.which("kubectl"))
    failed = False
    for folder in folders(args.root):
        name = os.path.relpath(folder, args.root)
        problems = []
        try:
            objects = render(folder)
        except (SystemExit, KeyError, ValueError, yaml.YAMLError) as error:
            objects, problems = [], [f"cannot render: {error}"]
        if kubectl and not problems:
            try:
                rendered = kubectl_render(kubectl, folder)
                if by_identity(rendered) != by_identity(objects):
                    problems.append("kubectl kustomize and the offline renderer disagree")
                objects = rendered
            except subprocess.CalledProcessError as error:
                problems.append(f"kubectl kustomize failed: {error.stderr.strip()}")
        for obj in objects:
            identity = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}"
            try:
                kubernetes_validate.validate(obj, args.kubernetes_version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = "/".join(str(part) for part in error.path)
                problems.append(f"{identity}: {path}: {error.message}")
            except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as error:
                problems.append(f"{identity}: no schema to check it with: {error}")
            if obj.get("kind") in {"Deployment", "DaemonSet", "StatefulSet"}:
                try:
                    problems += check_workload(obj, objects)
                except (KeyError, ValueError, TypeError) as error:
                    problems.append(f"{identity}: cannot check its grace period: {error!r}")
        kinds = ", ".join(sorted(f"{o.get('kind')}/{o.get('metadata', {}).get('name')}" for o in objects))
        if problems:
            failed = True
            print(f"{name}: INVALID")
            for problem in problems:
                print(f"  {problem}")
        else:
            renderer = "kubectl kustomize and the offline renderer" if kubectl else "the offline renderer"
            print(f"{name}: ok ({kinds}; Kubernetes {args.kubernetes_version}; rendered by {renderer})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
