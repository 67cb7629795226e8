#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this file).
#   1. installs what the tests need beyond the Rust toolchain (scripts/setup-test-deps.sh);
#   2. runs every Rust test (unit, golden anchors, property tests, CLI tests);
#   3. has an external FHIR validator nobody here wrote (R4 JSON schema, fhirkit,
#      fhir.resources, FHIRPath vital-signs invariants) check the Observations carewatch emits.
set -euo pipefail
cd "$(dirname "$0")/.."

# Reuse a persistent cargo target directory outside the clone when there is one.
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d "$HOME/.cache/carewatch-target" ]; then
  export CARGO_TARGET_DIR="$HOME/.cache/carewatch-target"
fi
target="${CARGO_TARGET_DIR:-$PWD/target}"

bash scripts/setup-test-deps.sh

echo "== cargo test"
out="$target/fhir-out"
rm -rf "$out" && mkdir -p "$out"
CAREWATCH_FHIR_OUT="$out" cargo test --workspace --locked

echo "== FHIR output of \`carewatch template check --fhir\` on the MedTech sample"
bin="$target/debug/carewatch"
for p in fixtures/payloads/medtech-sample-*.json; do
  "$bin" template check fixtures/templates/medtech-sample.devicemapping.json "$p" \
    --fhir-mapping fixtures/templates/medtech-sample.fhirmapping.json --fhir > "$out/template-$(basename "$p")"
done

echo "== external FHIR validation of $(ls "$out" | wc -l) files"
"${CAREWATCH_VENV:-$HOME/.cache/carewatch-venv}/bin/python" scripts/fhir_validate.py "$out"
bash scripts/test_fhir_validate.sh
