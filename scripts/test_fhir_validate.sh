#!/usr/bin/env bash
# Proves the external FHIR validator (scripts/fhir_validate.py) can both pass and fail:
#   - the official R4 vital-signs examples and our handwritten valid fixtures pass;
#   - each invalid case fails, and fails the check it was written for (not some other one);
#   - the exit code follows the verdict in both modes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-test-deps.sh
py="${CAREWATCH_VENV:-$HOME/.cache/carewatch-venv}/bin/python"
ex=fixtures/data/fhir-examples
validate() { "$py" scripts/fhir_validate.py "$@"; }
passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok: $*"; }
bad() { failed=$((failed + 1)); echo "SURPRISE: $*"; }

echo "== valid: official R4 Observation examples, handwritten valid ones"
if validate "$ex"/r4-core/Observation-*.json "$ex/handwritten-heart-rate-valid.json" fixtures/fhir-valid; then
  ok "all valid examples pass"
else bad "a valid example was rejected"; fi

echo "== invalid: each must fail the check it was written for"
# file -> the check (name before the colon in the validator's output) that must reject it
expect=(
  "handwritten-heart-rate-invalid.json fhirkit" "handwritten-heart-rate-bad-status.json status"
  "handwritten-heart-rate-two-values.json fhirkit"
  "body-weight-unit-lbs.json bodyweight" "bp-diastolic-unit-mmHg.json bp" "bp-missing-diastolic.json bp"
  "bp-systolic-no-value.json vs-3" "heart-rate-bad-datetime.json schema"
  "heart-rate-month-precision.json vs-1" "heart-rate-no-subject.json subject"
  "heart-rate-no-value.json vs-2" "heart-rate-no-vital-signs-category.json VSCat"
  "heart-rate-status-done.json status" "heart-rate-subject-device.json subject"
  "heart-rate-two-values.json fhir.resources" "heart-rate-unit-bpm.json heartrate"
  "spo2-without-2708-6.json oxygensat" "steps-quantity-no-ucum-system.json ucum"
)
out="$(mktemp)"; trap 'rm -f "$out"' EXIT
if validate --expect-invalid fixtures/fhir-invalid "$ex"/handwritten-heart-rate-{invalid,bad-status,two-values}.json | tee "$out"; then
  ok "every invalid case is rejected"
else bad "an invalid case was accepted"; fi
[ "$(grep -c '^OK ' "$out")" -eq "${#expect[@]}" ] || bad "expected ${#expect[@]} invalid cases, see above"
for e in "${expect[@]}"; do
  read -r file check <<<"$e"
  if grep -qE "^OK   ${file//./\\.} \(rejected: (.*; )?${check//./\\.}: " "$out"; then
    ok "$file rejected by $check"
  else bad "$file not rejected by $check"; fi
done

echo "== exit codes"
if validate fixtures/fhir-invalid/heart-rate-unit-bpm.json >/dev/null; then bad "exit 0 on an invalid file"; else ok "exit 1 on an invalid file"; fi
if validate --expect-invalid fixtures/fhir-valid >/dev/null; then bad "--expect-invalid exit 0 on valid files"; else ok "--expect-invalid exit 1 on valid files"; fi

echo "test_fhir_validate: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
