#!/usr/bin/env bash
# Runs the cluster of deploy/compose.yaml as plain processes, for machines without Docker: Garage
# (deploy/garage/garage.toml, `server --single-node --default-bucket`), PostgreSQL (the Debian
# package), Mosquitto (deploy/mosquitto/mosquitto.conf) and three carewatch nodes started from
# deploy/docker/cluster.toml rendered as compose's entrypoint renders it, with the environment
# compose.yaml gives them. Ports and directories move to 127.0.0.1 and a temporary directory.
# Then it checks what deploy/README.md says of the cluster and prints what it saw:
#   - one admin token for the cluster; a device enrolled on node 1 posts to node 2;
#   - every node counts the same readings (HTTP and MQTT through the shared subscription);
#   - after `kill -9` of node 3, the other two own all 64 alert partitions (seconds printed);
#   - MQTT messages published while node 3 is down reach the table once it is back.
# Needs what scripts/setup-test-deps.sh installs (Garage, PostgreSQL, Mosquitto, mosquitto_pub)
# and a built binary:
#
#   cargo build --release && deploy/cluster-smoke.sh      # or CAREWATCH_BIN=path/to/carewatch
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
bin=${CAREWATCH_BIN:-$repo/target/release/carewatch}
garage=${CAREWATCH_GARAGE:-$HOME/.cache/carewatch-tools/garage/bin/garage}
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
for x in "$bin" "$garage" "$pgbin/initdb"; do
  [ -x "$x" ] || { echo "cluster-smoke: $x is missing (cargo build --release; scripts/setup-test-deps.sh)" >&2; exit 2; }
done
base=${SMOKE_PORT_BASE:-47000} # ports base+0 .. base+99
s3=$base rpc=$((base + 1)) pg=$((base + 2)) mq=$((base + 3))
work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg/data" stop -m fast >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "cluster-smoke: FAIL: $*" >&2; exit 1; }

# compose.yaml's values, as resolved with no variables set
compose_env() { # NAME: the nodes' value of NAME in compose.yaml
  "${CAREWATCH_VENV:-$HOME/.cache/carewatch-venv}/bin/docker-compose" -f deploy/compose.yaml \
    config --format json | python3 -c \
    'import json, sys; print(json.load(sys.stdin)["services"]["carewatch-1"]["environment"][sys.argv[1]])' "$1"
}
key=$(compose_env AWS_ACCESS_KEY_ID) secret=$(compose_env AWS_SECRET_ACCESS_KEY)
store_url=$(compose_env CAREWATCH_OBJECT_STORE_URL) region=$(compose_env AWS_REGION)
pg_url=$(compose_env CAREWATCH_POSTGRES_URL)
pg_pw=$(python3 -c 'import sys, urllib.parse as u; print(u.urlsplit(sys.argv[1]).password)' "$pg_url")
pg_url=${pg_url/@postgres:5432/@127.0.0.1:$pg}

# Garage, as compose starts it
sed -e "s#/var/lib/garage#$work/garage#; s#\[::\]:3900#127.0.0.1:$s3#; s#\[::\]:3901#127.0.0.1:$rpc#" \
  -e "s#127.0.0.1:3901#127.0.0.1:$rpc#" deploy/garage/garage.toml > "$work/garage.toml"
bucket=${store_url#s3://} bucket=${bucket%%/*}
GARAGE_DEFAULT_BUCKET=$bucket GARAGE_DEFAULT_ACCESS_KEY=$key GARAGE_DEFAULT_SECRET_KEY=$secret RUST_LOG=garage=warn \
  "$garage" -c "$work/garage.toml" server --single-node --default-bucket > "$work/garage.log" 2>&1 &
pids+=($!)

# PostgreSQL with compose's user, password and database
mkdir "$work/pg" && chown postgres:postgres "$work/pg"
echo "$pg_pw" > "$work/pw" && chmod 644 "$work/pw"
runuser -u postgres -- "$pgbin/initdb" -D "$work/pg/data" -U carewatch -A md5 --pwfile="$work/pw" >/dev/null
runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg/data" -w -l "$work/pg/log" \
  -o "-p $pg -k $work/pg -c listen_addresses=127.0.0.1" start >/dev/null
PGPASSWORD=$pg_pw "$pgbin/createdb" -h 127.0.0.1 -p "$pg" -U carewatch carewatch

# Mosquitto with compose's file, on loopback (sessions in memory: run as root it would drop to
# the mosquitto user, who cannot write here)
sed -e "s#^listener 1883#listener $mq 127.0.0.1#" -e '/^persistence/d' \
  deploy/mosquitto/mosquitto.conf > "$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" > "$work/mosquitto.log" 2>&1 &
pids+=($!)

for _ in $(seq 100); do "$garage" -c "$work/garage.toml" bucket info "$bucket" >/dev/null 2>&1 && break; sleep 0.3; done
"$garage" -c "$work/garage.toml" bucket info "$bucket" | grep -q "$key" \
  || fail "garage made no bucket with the key (--default-bucket)"
echo "ok   garage: bucket and key from --single-node --default-bucket"

node_pid=()
start_node() { # N
  local n=$1 d="$work/node$1"
  mkdir -p "$d"
  sed "s/@NODE@/carewatch-$n/g" deploy/docker/cluster.toml \
    | sed "s#/var/lib/carewatch#$d#; s#0.0.0.0:8080#127.0.0.1:$((base + 10 + n))#; s#0.0.0.0:5433#127.0.0.1:$((base + 20 + n))#" \
    > "$d.toml"
  env CAREWATCH_MQTT_URL="mqtt://127.0.0.1:$mq" CAREWATCH_POSTGRES_URL="$pg_url" \
    CAREWATCH_OBJECT_STORE_URL="$store_url" AWS_ENDPOINT="http://127.0.0.1:$s3" AWS_ALLOW_HTTP=true \
    AWS_REGION="$region" AWS_ACCESS_KEY_ID="$key" AWS_SECRET_ACCESS_KEY="$secret" \
    "$bin" serve --config "$d.toml" >> "$work/node$n.log" 2>&1 &
  node_pid[n]=$!
  pids+=($!)
}
http() { echo "http://127.0.0.1:$((base + 10 + $1))"; }
healthy() { for _ in $(seq 240); do curl -fsS -o /dev/null "$(http "$1")/healthz" 2>/dev/null && return; sleep 0.5; done; fail "node $1 not healthy"; }
for n in 1 2 3; do start_node "$n"; healthy "$n"; done
echo "ok   3 nodes healthy"

tokens=$(grep -h 'admin token' "$work"/node*.log | wc -l)
[ "$tokens" -eq 1 ] || fail "$tokens admin tokens printed (one registry should print one)"
admin=$(grep -h 'admin token' "$work"/node*.log | sed 's/.*admin token: //; s/[" ].*//')
echo "ok   one admin token for the cluster"
json() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
dev=$(curl -fsS -H "Authorization: Bearer $admin" "$(http 1)/v1/devices" \
  -d '{"device_id":"smoke-watch","patient_id":"smoke-patient","valid_from":"2020-01-01T00:00:00Z"}' | json secret)
sleep 1.5 # the other nodes' registry polls (2/s): readings over MQTT before that are dead letters
ans=$(curl -fsS -H "Authorization: Bearer $dev" -H "Content-Type: application/x-ndjson" "$(http 2)/v1/readings" \
  --data-binary $'{"time":"2026-01-01T00:00:00Z","heart_rate":70}\n{"time":"2026-01-01T00:00:01Z","heart_rate":71}\n')
[ "$(echo "$ans" | json accepted)" = 2 ] || fail "node 2 did not take the secret node 1 issued: $ans"
echo "ok   a device enrolled on node 1 posts to node 2"
publish() { # FROM TO: one reading a second of 2026-01-01T00:01:FROM..TO
  for i in $(seq "$1" "$2"); do
    mosquitto_pub -p "$mq" -q 1 -t devices/smoke-watch/readings \
      -m "{\"time\":\"2026-01-01T00:01:$(printf %02d "$i")Z\",\"heart_rate\":80}"
  done
}
publish 0 29
analyst=$(curl -fsS -H "Authorization: Bearer $admin" "$(http 3)/v1/tokens" -d '{"role":"analyst"}' | json token)
count() { curl -fsS -H "Authorization: Bearer $analyst" "$(http "$1")/v1/sql" -d 'SELECT count(*) AS n FROM observations' | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["n"])'; }
wait_count() { # WANT NODES...
  local want=$1; shift
  for _ in $(seq 60); do
    local ok=true
    for n in "$@"; do [ "$(count "$n")" = "$want" ] || ok=false; done
    $ok && return 0
    sleep 0.5
  done
  for n in "$@"; do echo "node $n counts $(count "$n")"; done
  fail "not every node counts $want readings"
}
wait_count 32 1 2 3
echo "ok   every node counts the 32 readings (2 over HTTP to node 2, 30 over MQTT, shared subscription)"

owned() { curl -fsS -H "Authorization: Bearer $admin" "$(http "$1")/metrics" | sed -n 's/^carewatch_alert_partitions_owned //p'; }
kill -9 "${node_pid[3]}"
t0=$(date +%s.%N)
wait "${node_pid[3]}" 2>/dev/null || true
for _ in $(seq 100); do
  [ "$(( $(owned 1) + $(owned 2) ))" -eq 64 ] && break
  sleep 0.2
done
[ "$(( $(owned 1) + $(owned 2) ))" -eq 64 ] || fail "nodes 1 and 2 own $(( $(owned 1) + $(owned 2) )) of 64 partitions 20 s after the kill"
printf 'ok   kill -9 node 3: nodes 1 and 2 own all 64 alert partitions %.1f s later\n' \
  "$(echo "$(date +%s.%N) - $t0" | bc)"
publish 30 39
sleep 3
printf 'ok   10 MQTT readings while node 3 is down: node 1 counts %s of 42 before node 3 is back\n' "$(count 1)"
start_node 3
healthy 3
wait_count 42 1 2 3
echo "ok   node 3 back on its data directory: every node counts all 42 readings"
