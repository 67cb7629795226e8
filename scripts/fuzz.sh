#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a set time and prints executions per target.
#   scripts/fuzz.sh [seconds-per-target] [target...]     (default 60 s, every target)
# Exits non-zero if any target crashed (the input is saved under fuzz/artifacts/<target>/;
# reproduce with `cargo fuzz run <target> <file>` using the flags below).
#
# Only a stable toolchain is assumed. cargo-fuzz passes nightly-only flags to rustc and cargo
# (`-Zsanitizer=…`, `--cfg fuzzing` handling, `-Z` build options), so the build runs with
# RUSTC_BOOTSTRAP=1, which lets the stable compiler accept them. The default sanitizer is none
# (CAREWATCH_FUZZ_SANITIZER=address also works with the stable toolchain's ASan runtime): the
# code under test forbids `unsafe`, so ASan would find nothing Rust's own checks miss and
# roughly halves the executions; huge allocations are caught by the targets' capped allocator
# (libFuzzer's -malloc_limit_mb needs a sanitizer) and memory growth by -rss_limit_mb.
#
# cargo-fuzz is installed once into $CAREWATCH_TOOLS (default ~/.cache/carewatch-tools); the
# instrumented build goes to its own target directory ($CAREWATCH_FUZZ_TARGET, default
# ~/.cache/carewatch-fuzz-target), never the main one. The seed corpora in fuzz/corpus/<target>/
# are only read; what a run adds goes to <fuzz target dir>/corpus/<target>/ and is kept there
# for the next run.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
shift || true
tools="${CAREWATCH_TOOLS:-$HOME/.cache/carewatch-tools}"
target_dir="${CAREWATCH_FUZZ_TARGET:-$HOME/.cache/carewatch-fuzz-target}"
sanitizer="${CAREWATCH_FUZZ_SANITIZER:-none}"
version=0.13.2
export RUSTC_BOOTSTRAP=1

fuzz="$tools/bin/cargo-fuzz"
if ! "$fuzz" --version 2>/dev/null | grep -qx "cargo-fuzz $version"; then
  echo "== installing cargo-fuzz $version into $tools"
  cargo install cargo-fuzz --version "$version" --locked --root "$tools"
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <("$fuzz" list --fuzz-dir fuzz)
fi
flags=(--fuzz-dir fuzz --target-dir "$target_dir" --sanitizer "$sanitizer")

echo "== building fuzz targets (sanitizer: $sanitizer)"
start=$(date +%s)
"$fuzz" build "${flags[@]}"
echo "fuzz build: $(($(date +%s) - start)) s"

logs="$target_dir/logs"
mkdir -p "$logs"
failed=()
rows=()
for t in "${targets[@]}"; do
  corpus="$target_dir/corpus/$t"
  mkdir -p "$corpus" "fuzz/corpus/$t" "fuzz/artifacts/$t"
  log="$logs/$t.log"
  echo "== $t: ${secs} s"
  # Flags after `--` go to libFuzzer: the run time, a per-input time limit, a memory limit,
  # and the final statistics this script reads.
  if "$fuzz" run "${flags[@]}" "$t" "$corpus" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=1024 -print_final_stats=1 \
    >"$log" 2>&1; then
    result=ok
  else
    result=CRASH
    failed+=("$t")
    grep -E "panicked|ERROR: libFuzzer|SUMMARY|Test unit written|carewatch-fuzz:" "$log" | head -20 || true
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  persec=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  units=$(find "$corpus" -type f | wc -l)
  rows+=("$(printf '| %-15s | %13s | %9s | %7s | %-6s |' "$t" "${execs:-?}" "${persec:-?}" "$units" "$result")")
done

echo
echo "fuzzing, ${secs} s per target (sanitizer: $sanitizer; logs in $logs):"
echo "| target          |    executions |   execs/s |  corpus | result |"
echo "|-----------------|--------------:|----------:|--------:|--------|"
printf '%s\n' "${rows[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
