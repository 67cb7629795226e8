#!/usr/bin/env bash
# The release artifact (issue 17): what the Dockerfile, systemd and Kubernetes install.
# Builds the README's release binary, then splits its symbol table out:
#   OUT/carewatch        the binary, stripped of every symbol, with a .gnu_debuglink naming
#                        carewatch.debug and its CRC;
#   OUT/carewatch.debug  the symbol table (no DWARF: the profile has none).
# Rust's panic backtraces follow the link (std's symboliser looks beside the binary, in its
# .debug/ directory and under /usr/lib/debug), so with carewatch.debug installed next to the
# binary a backtrace names its functions; without it the frames are addresses, which
# `addr2line -f -e carewatch.debug ADDR` or gdb names afterwards. scripts/size-budget.sh
# holds OUT/carewatch to its budget and checks the link.
#
#   scripts/package.sh [--out DIR] [--profile NAME]   (defaults: dist, release)
set -euo pipefail
cd "$(dirname "$0")/.."
out=dist
profile=release
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    *) echo "usage: $0 [--out DIR] [--profile NAME]" >&2; exit 2 ;;
  esac
done
command -v objcopy >/dev/null 2>&1 || {
  echo "setup: apt-get install binutils"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binutils >/dev/null
}
target=$(realpath -m "${CARGO_TARGET_DIR:-$PWD/target}")
dir=$profile
[ "$profile" = dev ] && dir=debug
echo "package: cargo build --profile $profile --locked --bin carewatch"
cargo build --profile "$profile" --locked --bin carewatch
mkdir -p "$out"
# Write beside, then rename: an installed binary that is running is never rewritten in place.
objcopy --only-keep-debug "$target/$dir/carewatch" "$out/carewatch.debug.tmp"
mv -f "$out/carewatch.debug.tmp" "$out/carewatch.debug"
# The link records the file name and its CRC; objcopy reads both from the path given.
(cd "$out" && objcopy --strip-all --add-gnu-debuglink=carewatch.debug \
  "$target/$dir/carewatch" carewatch.tmp && mv -f carewatch.tmp carewatch)
echo "package: $out/carewatch $(stat -c %s "$out/carewatch") bytes," \
  "$out/carewatch.debug $(stat -c %s "$out/carewatch.debug") bytes"
