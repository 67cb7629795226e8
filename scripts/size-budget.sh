#!/usr/bin/env bash
# The release artifact's size budget (issue 17): the binary scripts/package.sh makes from the
# README's run command's profile (the Dockerfile, systemd and Kubernetes install that artifact).
# Packages it into ${CARGO_TARGET_DIR:-target}/package (building incrementally, like any build
# there), then fails unless
#   size      the binary is at most $budget bytes (150 MB, the issue's goal; BENCHMARKS.md,
#             "First start", has the figure and what takes the space);
#   debug     it carries no DWARF (.debug_* sections: the profile must strip or split them);
#   profiles  every package that release builds below opt-level 3 is back at 3 in the bench
#             profile (bench inherits release's package overrides, and every figure in
#             BENCHMARKS.md is measured with bench);
#   symbols   its symbols are in carewatch.debug beside it and a panic's backtrace finds them:
#             the binary's .gnu_debuglink names that file with its CRC-32 (what Rust's
#             symboliser and gdb check before they use it), both carry the same build id, and
#             the file has carewatch's own function symbols.
#
#   scripts/size-budget.sh              package and check
#   scripts/size-budget.sh --self-test  also break a copy of the artifact once per check and
#                                       fail unless that check catches it
set -euo pipefail
cd "$(dirname "$0")/.."
budget=150000000

self_test=false
case "${1:-}" in
  "") ;;
  --self-test) self_test=true ;;
  *) echo "usage: $0 [--self-test]" >&2; exit 2 ;;
esac
command -v readelf >/dev/null 2>&1 && command -v objcopy >/dev/null 2>&1 || {
  echo "setup: apt-get install binutils"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binutils >/dev/null
}

# The README's run command, e.g. `cargo run --release -- serve`, and its profile.
cmd=$(awk '/^```sh/ { inblock = 1; next } inblock && /^```/ { exit } inblock && NF { print; exit }' README.md)
case "$cmd" in
  "cargo run "*" -- "*) ;;
  *) echo "size-budget: README's run command is not \`cargo run … -- ARGS\`: $cmd" >&2; exit 1 ;;
esac
flags=${cmd#cargo run}
flags=${flags%% -- *}
profile=dev
case " $flags " in
  *" --release "* | *" -r "*) profile=release ;;
  *" --profile "*) profile=$(sed -E 's/.*--profile[ =]([A-Za-z0-9_-]+).*/\1/' <<<"$flags") ;;
esac
out="${CARGO_TARGET_DIR:-$PWD/target}/package"
bash scripts/package.sh --profile "$profile" --out "$out"
bin="$out/carewatch"
dbg="$out/carewatch.debug"

fail=0
check_size() { # FILE BUDGET
  local bytes
  bytes=$(stat -c %s "$1")
  if [ "$bytes" -gt "$2" ]; then
    echo "size-budget: FAIL size: $1 is $bytes bytes, over the budget of $2" >&2
    return 1
  fi
  echo "size-budget: ok size: $bytes bytes ($((bytes / 1000000)) MB) <= $2"
}
check_debug() { # FILE
  local dbg
  dbg=$(readelf -SW "$1" | grep -oE '\.(z?debug|zdebug)_[a-z_.]+' | sort -u | tr '\n' ' ')
  if [ -n "$dbg" ]; then
    echo "size-budget: FAIL debug: $1 carries DWARF: $dbg" >&2
    return 1
  fi
  echo "size-budget: ok debug: no .debug_* sections"
}
check_profiles() { # CARGO_TOML
  python3 - "$1" <<'PY'
import sys, tomllib
prof = tomllib.load(open(sys.argv[1], "rb")).get("profile", {})
rel, bench = prof.get("release", {}), prof.get("bench", {})
bad = [name for name, o in rel.get("package", {}).items()
       if str(o.get("opt-level", 3)) != "3"
       and str(bench.get("package", {}).get(name, {}).get("opt-level")) != "3"]
for k in ("lto", "codegen-units"):
    if k in rel and k not in bench:
        bad.append(f"[profile.bench] {k} (release sets it)")
if bad:
    sys.exit("size-budget: FAIL profiles: the bench profile inherits release's " + ", ".join(bad)
             + "; set them to opt-level 3 / the default under [profile.bench]")
print("size-budget: ok profiles: bench builds every package at opt-level 3")
PY
}
build_id() { readelf -n "$1" 2>/dev/null | awk '/Build ID:/ { print $3 }'; }
check_symbols() { # BINARY DEBUGFILE
  local link n
  link=$(python3 - "$1" "$2" <<'PY'
import os, subprocess, sys, tempfile, zlib
binary, debug = sys.argv[1:3]
with tempfile.TemporaryDirectory() as d:
    sec = os.path.join(d, "link")
    r = subprocess.run(["objcopy", "--dump-section", f".gnu_debuglink={sec}", binary, os.path.join(d, "x")],
                       capture_output=True)
    if r.returncode != 0 or not os.path.exists(sec):
        sys.exit("no .gnu_debuglink section")
    raw = open(sec, "rb").read()
name = raw.split(b"\0", 1)[0].decode()
crc = int.from_bytes(raw[-4:], "little")
if name != os.path.basename(debug):
    sys.exit(f"the link names {name!r}, not {os.path.basename(debug)!r}")
if zlib.crc32(open(debug, "rb").read()) != crc:
    sys.exit(f"the link's CRC does not match {debug}")
print(name)
PY
  ) || { echo "size-budget: FAIL symbols: $1 does not link to $2" >&2; return 1; }
  if [ -z "$(build_id "$1")" ] || [ "$(build_id "$1")" != "$(build_id "$2")" ]; then
    echo "size-budget: FAIL symbols: $2 is not from the build of $1 (build ids differ)" >&2
    return 1
  fi
  n=$({ nm --defined-only "$2" 2>/dev/null || true; } | grep -c 'carewatch' || true)
  if [ "$n" -lt 100 ]; then
    echo "size-budget: FAIL symbols: $2 has $n carewatch symbols; a panic backtrace would show" \
      "no function names" >&2
    return 1
  fi
  echo "size-budget: ok symbols: $1 links to $link (CRC and build id match), $n carewatch symbols"
}

check_profiles Cargo.toml || fail=1
check_size "$bin" "$budget" || fail=1
check_debug "$bin" || fail=1
check_symbols "$bin" "$dbg" || fail=1

if $self_test; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  caught() { # NAME COMMAND…: the check must fail
    local name=$1
    shift
    if "$@" >/dev/null 2>&1; then
      echo "size-budget: self-test FAIL: the $name check passed an artifact that breaks it" >&2
      fail=1
    else
      echo "size-budget: self-test ok: the $name check catches it"
    fi
  }
  sed '/^\[profile.bench.package.fhir-model\]$/{n;s/^opt-level = 3$/opt-level = 1/}' Cargo.toml \
    >"$work/Cargo.toml"
  caught profiles check_profiles "$work/Cargo.toml"
  caught size check_size "$bin" "$(($(stat -c %s "$bin") - 1))"
  head -c 4096 /dev/urandom >"$work/dwarf"
  objcopy --add-section .debug_info="$work/dwarf" "$bin" "$work/with-debug"
  caught debug check_debug "$work/with-debug"
  rm -f "$work/with-debug"
  objcopy --remove-section .gnu_debuglink "$bin" "$work/carewatch"
  caught "symbols (no link)" check_symbols "$work/carewatch" "$dbg"
  cp "$dbg" "$work/carewatch.debug" && printf x >>"$work/carewatch.debug"
  caught "symbols (another file)" check_symbols "$bin" "$work/carewatch.debug"
  # A debug file without symbols, linked properly: only the symbol count can catch it.
  objcopy --strip-all "$dbg" "$work/carewatch.debug"
  objcopy --remove-section .gnu_debuglink "$bin" "$work/carewatch"
  (cd "$work" && objcopy --add-gnu-debuglink=carewatch.debug carewatch)
  caught "symbols (no symbols)" check_symbols "$work/carewatch" "$work/carewatch.debug"
fi
exit "$fail"
