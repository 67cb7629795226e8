#!/usr/bin/env bash
# Installs what the tests need beyond the Rust toolchain, idempotently (a second run with
# nothing to do takes well under a second):
#   - Debian packages: Mosquitto broker and clients (MQTT tests), psql (Postgres wire tests),
#     the PostgreSQL server (cluster mode's registry),
#     curl and openssl (HTTP and TLS tests);
#   - a Python venv at ${CAREWATCH_VENV:-~/.cache/carewatch-venv} with an external FHIR validator
#     nobody here wrote (fhirkit-rs, the strict R4 models of fhir.resources 6.4 on pydantic 1,
#     jsonschema for the official R4 JSON schema, fhirpathpy for the vital-signs invariants),
#     plus DuckDB and pyarrow (read our Parquet), paho-mqtt and psycopg (real clients), and the
#     Prometheus project's text-format parser (prometheus-client) for /metrics;
#   - Debian's Chromium and, from npm, playwright-core (drives it for the dashboard test) and
#     oidc-provider (the identity provider of the single sign-on tests) in
#     ${CAREWATCH_NODE_DIR:-~/.cache/carewatch-node}.
set -euo pipefail

# ---- Debian packages -------------------------------------------------------------------------
need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
# The PostgreSQL server (cluster-mode tests start a private one with initdb + pg_ctl).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
else
  echo "setup: Debian packages present"
fi

# ---- Garage (crates.io): the S3-compatible object store of the cluster tests ------------------
# Built once into a cache (a release build of a few hundred crates: see BENCHMARKS.md for its
# time on 2 cores) and reused; its build directory is removed afterwards.
garage_root="${CAREWATCH_GARAGE_ROOT:-$HOME/.cache/carewatch-tools/garage}"
if [ -x "$garage_root/bin/garage" ]; then
  echo "setup: garage present in $garage_root"
else
  echo "setup: cargo install garage 2.5.0 into $garage_root (once)"
  CARGO_TARGET_DIR="$HOME/.cache/garage-build" cargo install garage --version 2.5.0 --locked \
    --root "$garage_root" --no-default-features --features bundled-libs,sqlite
  rm -rf "$HOME/.cache/garage-build"
fi

# ---- playwright-core and oidc-provider (npm) ----------------------------------------------------
# playwright-core is only the driver library: it launches Debian's /usr/bin/chromium, so no
# browser download. oidc-provider (OpenID-certified) is the identity provider of the single
# sign-on tests (tests/oidc/provider.mjs).
node_dir="${CAREWATCH_NODE_DIR:-$HOME/.cache/carewatch-node}"
if [ -f "$node_dir/node_modules/playwright-core/package.json" ] \
  && [ -f "$node_dir/node_modules/oidc-provider/package.json" ]; then
  echo "setup: playwright-core and oidc-provider present in $node_dir"
else
  echo "setup: npm install playwright-core oidc-provider into $node_dir"
  mkdir -p "$node_dir"
  (cd "$node_dir" && { [ -f package.json ] || npm init -y >/dev/null; } \
    && npm install --silent --no-audit --no-fund playwright-core@1 oidc-provider@9 >/dev/null)
fi

# axe-core (Deque's accessibility engine) checks the triage dashboard in Chromium
# (tests/dashboard/triage.mjs).
if [ -f "$node_dir/node_modules/axe-core/axe.min.js" ]; then
  echo "setup: axe-core present in $node_dir"
else
  echo "setup: npm install axe-core into $node_dir"
  mkdir -p "$node_dir"
  (cd "$node_dir" && { [ -f package.json ] || npm init -y >/dev/null; } \
    && npm install --silent --no-audit --no-fund axe-core@4 >/dev/null)
fi

# ---- Python venv -----------------------------------------------------------------------------
# fhir.resources 6.4.0 is the last release whose default models are plain R4 (4.0.1); it needs
# pydantic 1, and co-installs with the rest in one venv (pip check is clean).
venv="${CAREWATCH_VENV:-$HOME/.cache/carewatch-venv}"
reqs=(
  "fhirkit-rs==0.1.0" "fhir.resources==6.4.0" "pydantic[email]<2" "jsonschema==4.*"
  "fhirpathpy==2.2.4" "duckdb==1.*" "pyarrow" "paho-mqtt==2.*" "psycopg[binary]==3.*" "pytz" "prometheus-client==0.*"
  "deltalake==1.*" "polars"
)
stamp="$venv/.carewatch-reqs.sha256"
want="$( { python3 --version; printf '%s\n' "${reqs[@]}"; } | sha256sum | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "setup: python venv $venv up to date"
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating python venv $venv"
  python3 -m venv "$venv"
fi
echo "setup: pip install ${reqs[*]}"
"$venv/bin/pip" install -q --disable-pip-version-check "${reqs[@]}"
"$venv/bin/pip" check
"$venv/bin/pip" list --disable-pip-version-check 2>/dev/null \
  | grep -iE '^(fhirkit-rs|fhir.resources|pydantic|jsonschema|fhirpathpy|duckdb|pyarrow|paho-mqtt|psycopg|deltalake|polars) ' \
  | sed 's/^/setup:   /'
echo "$want" > "$stamp"
