#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this file).
#   1. installs what the tests need beyond the Rust toolchain (scripts/setup-test-deps.sh);
#   2. runs every Rust test (unit, golden anchors, property, crash, end-to-end with real clients),
#      then checks that no log line of theirs at INFO or above carries a patient id, device id or
#      token the tests used (scripts/check_logs_phi.py, which first proves it can fail);
#   3. has tools nobody here wrote check our output: an external FHIR validator (R4 JSON schema,
#      fhirkit, fhir.resources, FHIRPath vital-signs invariants) on the Observations carewatch
#      emits, and DuckDB + pyarrow on the Parquet files it writes;
#   4. validates the deployment files (compose, Kubernetes, systemd, Dockerfile) with real
#      parsers, and proves each check can fail (scripts/check-deploy.sh --self-test).
#   5. builds the README's run command's binary (release) and holds it to its size budget
#      (scripts/size-budget.sh --self-test).
set -euo pipefail
cd "$(dirname "$0")/.."

# Wall time per phase, printed at the end (also when a phase fails): CI has 90 minutes, and a
# fresh run should stay under 45.
t0=$(date +%s) prev=$(date +%s) phase="setup (installs, once per machine)" times=()
step() { # NAME: ends the current phase, starts NAME
  local now
  now=$(date +%s)
  times+=("$((now - prev)) s  $phase")
  prev=$now phase=$1
  echo "== $1"
}
trap 'step end >/dev/null; printf "timing: %s\n" "${times[@]}"; echo "timing: $(($(date +%s) - t0)) s in all"' EXIT

# Reuse a persistent cargo target directory outside the clone when there is one.
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d "$HOME/.cache/carewatch-target" ]; then
  export CARGO_TARGET_DIR="$HOME/.cache/carewatch-target"
fi
target="${CARGO_TARGET_DIR:-$PWD/target}"
# A build from scratch gains nothing from incremental state, which takes gigabytes of disk
# (a CI run once failed on a full disk).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
py="${CAREWATCH_VENV:-$HOME/.cache/carewatch-venv}/bin/python"

bash scripts/setup-test-deps.sh

out="$target/test-out"
rm -rf "$out" && mkdir -p "$out/fhir"
# End-to-end tests save every carewatch process's log here, with the ids and tokens they used.
# A directory of this run's own, so a test run beside it (or a stale one) cannot interfere.
rm -rf "$target"/test-logs.run.* 2>/dev/null || true
mkdir -p "$target"
logs="$(mktemp -d "$target/test-logs.run.XXXXXX")"
step "cargo test ($(df -h "$target" | awk 'NR==2 {print $4}') free)"
CAREWATCH_FHIR_OUT="$out/fhir" CAREWATCH_PARQUET_OUT="$out/parquet" CAREWATCH_TEST_LOGS="$logs" \
  cargo test --workspace --locked --no-fail-fast

step "no patient id, device id or token in any log line at INFO or above"
"$py" scripts/check_logs_phi.py --self-test
"$py" scripts/check_logs_phi.py "$logs"

step "FHIR from \`carewatch template check --fhir\` on MedTech's sample mapping"
for p in fixtures/payloads/medtech-sample-*.json; do
  "$target/debug/carewatch" template check fixtures/templates/medtech-sample.devicemapping.json "$p" \
    --fhir-mapping fixtures/templates/medtech-sample.fhirmapping.json --fhir > "$out/fhir/template-$(basename "$p")"
done

step "external FHIR validation of what carewatch emits"
"$py" scripts/fhir_validate.py "$out/fhir"
step "the validator itself: official R4 examples pass, each broken case fails its own check"
bash scripts/test_fhir_validate.sh

step "DuckDB and pyarrow read carewatch's Parquet"
"$py" scripts/check_parquet.py "$out/parquet"

step "deployment files: compose, Kubernetes manifests, systemd unit, Dockerfile"
bash scripts/check-deploy.sh --self-test

step "the binary the README builds: size budget, no DWARF, symbol table kept (issue 17)"
bash scripts/size-budget.sh --self-test

step "fuzzing: every cargo-fuzz target for 5 s (installs cargo-fuzz into ~/.cache on first use)"
bash scripts/fuzz.sh 5
