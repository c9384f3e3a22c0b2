#!/usr/bin/env bash
# Validate every kustomization here (base, overlays/*) offline against a pinned
# Kubernetes version: rendered with `kubectl kustomize` if kubectl is installed (and
# checked against manifests.py's own renderer), else with that renderer alone; each
# object validated strictly by the `kubernetes-validate` package (pip install
# kubernetes-validate); the grace period checked against the ConfigMap's
# shutdown-grace-ms. Exits non-zero on any problem, naming it.
#
#   deploy/kubernetes/validate.sh                 # Kubernetes 1.34.0
#   KUBERNETES_VERSION=1.35.0 deploy/kubernetes/validate.sh
#   KUBECTL= deploy/kubernetes/validate.sh        # without kubectl, as on a CI machine
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec python3 "$here/manifests.py" "$here" --kubernetes-version "${KUBERNETES_VERSION:-1.34.0}"
