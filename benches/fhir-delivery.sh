#!/usr/bin/env bash
# FHIR destination throughput (issue 14): N readings posted to a running `carewatch serve`,
# timed until the validating FHIR server (tests/fhir_server/receiver.py: every resource checked
# with fhir.resources' strict R4 models) holds all of them as Observations.
# Usage: benches/fhir-delivery.sh [readings (10000)] [carewatch binary (release)]
# Prints readings, seconds from the last acknowledged POST to the last delivered Observation,
# and delivered Observations per second (from the first POST).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
BIN=${2:-${CARGO_TARGET_DIR:-target}/release/carewatch}
PY=${CAREWATCH_PYTHON:-$HOME/.cache/carewatch-venv/bin/python}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait; rm -rf "$WORK"' EXIT
"$PY" tests/fhir_server/receiver.py > "$WORK/recv.out" &
RECV_PID=$!
until grep -q "listening on" "$WORK/recv.out" 2>/dev/null; do sleep 0.1; done
FHIR="http://127.0.0.1:$(sed -n 's/listening on //p' "$WORK/recv.out")"
"$BIN" serve --data-dir "$WORK/data" --http-addr 127.0.0.1:0 --mqtt-addr 127.0.0.1:0 \
  --pg-addr 127.0.0.1:0 --fhir-destination "$FHIR" > "$WORK/cw.out" 2> "$WORK/cw.err" &
CW_PID=$!
until grep -q "^http listening on" "$WORK/cw.out" 2>/dev/null; do sleep 0.1; done
HTTP="http://$(sed -n 's/^http listening on //p' "$WORK/cw.out")"
ADMIN=$(sed -n 's/^admin token: //p' "$WORK/cw.out")
curl -sf -o /dev/null -H "authorization: Bearer $ADMIN" -H 'content-type: application/json' \
  -d '{"device_id":"bench-dev","patient_id":"bench-pat","valid_from":"2020-01-01T00:00:00Z"}' \
  "$HTTP/v1/devices"
"$PY" - "$N" > "$WORK/readings.ndjson" <<'PY'
import datetime, json, sys
n = int(sys.argv[1])
t0 = datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone.utc)
for i in range(n):
    t = (t0 + datetime.timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
    print(json.dumps({"device_id": "bench-dev", "time": t, "heart_rate": 60 + i % 40}))
PY
split -l 1000 "$WORK/readings.ndjson" "$WORK/part."
t0=$(date +%s.%N)
for f in "$WORK"/part.*; do
  code=$(curl -s -o "$WORK/answer" -w '%{http_code}' -H "authorization: Bearer $ADMIN" \
    -H 'content-type: application/x-ndjson' --data-binary @"$f" "$HTTP/v1/readings")
  [ "$code" = 202 ] || { echo "POST answered $code: $(head -c 300 "$WORK/answer")" >&2; exit 1; }
done
t1=$(date +%s.%N)
while :; do
  got=$(curl -sf "$FHIR/_stats" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["resources"])')
  [ "$got" -ge "$N" ] && break
  sleep 0.05
done
t2=$(date +%s.%N)
"$PY" - "$N" "$t0" "$t1" "$t2" "$got" "$CW_PID" "$RECV_PID" <<'PY'
import os, sys
n, t0, t1, t2, got = int(sys.argv[1]), *map(float, sys.argv[2:5]), int(sys.argv[5])
def cpu(pid):  # user + system CPU seconds of a process so far
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
print(f"readings {n}, on the server {got}; posted in {t1 - t0:.2f} s; "
      f"last delivered {t2 - t1:.2f} s after the last ack; {got / (t2 - t0):.0f} Observations/s delivered; "
      f"CPU s: carewatch {cpu(sys.argv[6]):.1f}, FHIR server {cpu(sys.argv[7]):.1f}")
PY
