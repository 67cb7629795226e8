#!/usr/bin/env bash
# Installs what the tests need beyond the Rust toolchain, idempotently:
#   - Debian packages: Mosquitto broker and clients (MQTT tests);
#   - a Python venv with an external FHIR validator nobody here wrote (fhirkit-rs, the strict
#     R4 models of fhir.resources 6.4, jsonschema for the official R4 JSON schema, fhirpathpy
#     for the vital-signs invariants), DuckDB and pyarrow (read our Parquet), paho-mqtt.
# A second run with nothing to do takes well under a second.
set -euo pipefail

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
# (later issues add: postgresql-client for psql, chromium for the dashboard)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

venv="${CAREWATCH_VENV:-$HOME/.cache/carewatch-venv}"
reqs=(
  "fhir.resources==6.4.0" "pydantic[email]<2" "fhirkit-rs==0.1.0" "jsonschema==4.*"
  "fhirpathpy==2.2.4" "duckdb==1.*" "pyarrow" "paho-mqtt==2.*"
)
stamp="$venv/.carewatch-reqs"
want="$(printf '%s\n' "${reqs[@]}")"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: python venv $venv up to date"
else
  echo "setup: creating python venv $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${reqs[@]}"
  printf '%s' "$want" > "$stamp"
fi
