#!/usr/bin/env bash
# A newcomer's first start, measured (issue 17): `git clone`, then the README's run command (its
# first ```sh block, run as printed) on a clean target directory, until /healthz answers 200.
# Prints the seconds the clone, the build and the whole first start took, and the binary's size.
#
#   scripts/first-start.sh                     # clone this repository's HEAD
#   scripts/first-start.sh --source URL|PATH   # clone something else (e.g. the GitHub URL)
#   scripts/first-start.sh --timings           # build with `cargo build --timings` (the same
#                                              # profile and binary) before the run command, for
#                                              # cargo's per-crate report (kept with --keep)
#   scripts/first-start.sh --keep              # keep the clone and its target directory
#
# What it does not measure: downloading crates (cargo's registry cache under $CARGO_HOME is used
# as it is; on a machine without it, add the download) and installing the Rust toolchain.
# The server gets free ports through CAREWATCH_HTTP_ADDR / _MQTT_ADDR / _PG_ADDR, so the README's
# command runs unchanged beside anything already on 8080/1883/5433. Run it under `nice` on a
# shared machine; the figures then include the load, say so where you report them.
set -euo pipefail
# One block, read whole before it runs: a `git pull` during the long build cannot change it.
{
repo=$(cd "$(dirname "$0")/.." && pwd)
source_repo=$repo
keep=false
timings=false
while [ $# -gt 0 ]; do
  case "$1" in
    --source) source_repo=$2; shift 2 ;;
    --keep) keep=true; shift ;;
    --timings) timings=true; shift ;;
    *) echo "usage: $0 [--source URL|PATH] [--timings] [--keep]" >&2; exit 2 ;;
  esac
done

work=$(mktemp -d "${TMPDIR:-/tmp}/carewatch-first-start.XXXXXX")
serve_pid=""
cleanup() {
  if [ -n "$serve_pid" ]; then
    kill -TERM -- "-$serve_pid" 2>/dev/null || kill -TERM "$serve_pid" 2>/dev/null || true
    wait "$serve_pid" 2>/dev/null || true
  fi
  if $keep; then echo "first-start: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", b - a }'; }
# CPU seconds (user + system) of the children PID has waited for: the build's rustc processes.
child_cpu() {
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); printf "%.0f", ($14 + $15) / hz }' "/proc/$1/stat"
}
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

load0=$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' /)
t0=$(now)
git clone -q "$source_repo" "$work/carewatch"
t_clone=$(now)
cd "$work/carewatch"
# The README's run command: the first line of its first ```sh block.
cmd=$(awk '/^```sh/ { inblock = 1; next } inblock && /^```/ { exit } inblock && NF { print; exit }' README.md)
[ -n "$cmd" ] || { echo "first-start: no run command in README.md" >&2; exit 1; }
echo "first-start: commit $(git rev-parse --short HEAD), run command: $cmd"

# A clean target directory of its own; nothing inherited that would change the build.
export CARGO_TARGET_DIR="$work/target"
unset RUSTFLAGS CARGO_BUILD_RUSTFLAGS CARGO_INCREMENTAL CARGO_PROFILE_RELEASE_DEBUG || true
http_port=$(free_port)
export CAREWATCH_HTTP_ADDR="127.0.0.1:$http_port"
export CAREWATCH_MQTT_ADDR="127.0.0.1:$(free_port)"
export CAREWATCH_PG_ADDR="127.0.0.1:$(free_port)"

t_built=""
build_cpu=""
if $timings; then
  # The same build `cargo run` would do, with cargo's per-crate timing report.
  build=${cmd%% -- *}
  build=${build/cargo run/cargo build --timings --bin carewatch}
  echo "first-start: $build"
  cpu0=$(child_cpu $$)
  $build >"$work/timings.log" 2>&1 || { tail -30 "$work/timings.log"; exit 1; }
  echo "first-start: timing report $(ls "$CARGO_TARGET_DIR"/cargo-timings/cargo-timing.html)"
  t_built=$(now)
  build_cpu=$(($(child_cpu $$) - cpu0))
  echo "first-start: built after $(secs "$t_clone" "$t_built") s"
fi

log="$work/serve.log"
setsid bash -c "$cmd" >"$log" 2>&1 &
serve_pid=$!
while :; do
  if ! kill -0 "$serve_pid" 2>/dev/null; then
    echo "first-start: the run command exited:" >&2
    tail -40 "$log" >&2
    exit 1
  fi
  if [ -z "$t_built" ] && grep -q '^ *Running `' "$log"; then
    t_built=$(now)
    build_cpu=$(child_cpu "$serve_pid")
    echo "first-start: built after $(secs "$t_clone" "$t_built") s"
  fi
  if curl -fsS -o /dev/null "http://127.0.0.1:$http_port/healthz" 2>/dev/null; then
    break
  fi
  sleep 1
done
t_ready=$(now)
[ -n "$t_built" ] || t_built=$t_ready

bin=$(find "$CARGO_TARGET_DIR" -mindepth 2 -maxdepth 2 -type f -name carewatch -newer README.md | head -1)
bytes=$(stat -c %s "$bin")
profile=$(basename "$(dirname "$bin")")
echo "first-start: clone_seconds=$(secs "$t0" "$t_clone") build_seconds=$(secs "$t_clone" "$t_built")" \
  "total_seconds=$(secs "$t0" "$t_ready") build_cpu_seconds=${build_cpu:-?} binary=target/$profile/carewatch binary_bytes=$bytes" \
  "binary_mib=$((bytes / 1048576)) cores=$(nproc)" \
  "load_at_start=$load0 load_at_end=$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' /)"
exit 0
}
