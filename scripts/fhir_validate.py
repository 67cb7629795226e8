"""External validation of FHIR R4 Observations with tools nobody on this project wrote.

Usage: fhir_validate.py [--expect-invalid] PATH...
Each PATH is a JSON file or a directory of *.json: an Observation, a Bundle of them, or an array.
Every Observation is checked by
  - the official R4 JSON schema (shared/data/fhir-examples/fhir.r4.schema.json) via jsonschema,
  - fhirkit (fhirkit-rs), which also catches value[x] exclusivity,
  - fhir.resources 6.4.0, the strict R4 pydantic models,
  - the HL7 vital-signs profile rules, evaluated with fhirpathpy (vs-1, vs-2, vs-3, VSCat,
    subject) and the per-profile LOINC/UCUM rules of shared/reference.md §3.
With --expect-invalid every resource must FAIL at least one check (proves the checks can fail).
"""
import json
import os
import sys
from pathlib import Path

import fhirkit
import jsonschema
from fhir.resources.observation import Observation
from fhirpathpy import evaluate
from fhirpathpy.models import models

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CAREWATCH_SHARED", REPO.parent / "shared"))
SCHEMA = json.loads((SHARED / "data/fhir-examples/fhir.r4.schema.json").read_text())
SCHEMA.pop("oneOf", None)
VALIDATOR = jsonschema.Draft6Validator({**SCHEMA, "$ref": "#/definitions/Observation"})
UCUM = "http://unitsofmeasure.org"
CAT = "http://terminology.hl7.org/CodeSystem/observation-category"

FHIRPATH = {
    "vs-1": "effective.ofType(dateTime).all($this.toString().length() >= 8)",
    "vs-2": "(component.empty() and hasMember.empty()) implies (dataAbsentReason.exists() or value.exists())",
    "vs-3": "component.all(value.exists() or dataAbsentReason.exists())",
    "subject": "subject.reference.startsWith('Patient/')",
    "status": "status in ('registered' | 'preliminary' | 'final' | 'amended' | 'corrected' | 'cancelled' | 'entered-in-error' | 'unknown')",
}
# LOINC code -> allowed UCUM codes (reference.md §3.2)
PROFILES = {
    "8867-4": {"/min"}, "9279-1": {"/min"}, "2708-6": {"%"}, "8310-5": {"Cel", "[degF]"},
    "29463-7": {"kg", "g", "[lb_av]"}, "8302-2": {"cm", "[in_i]"}, "39156-5": {"kg/m2"},
}


def fp(doc, expr):
    return evaluate(doc, expr, {}, models["r4"])


def codes(concept):
    return [c.get("code") for c in (concept or {}).get("coding", []) if c.get("system") == "http://loinc.org"]


def profile_checks(o):
    errs = []
    cs = codes(o.get("code"))
    vital = any(c in PROFILES or c == "85354-9" for c in cs)
    for name, expr in FHIRPATH.items():
        if fp(o, expr) != [True]:
            errs.append(f"{name}: {expr}")
    if vital and fp(o, f"category.coding.where(system='{CAT}' and code='vital-signs').exists()") != [True]:
        errs.append("VSCat: no vital-signs category")
    quantities = [o["valueQuantity"]] if "valueQuantity" in o else []
    quantities += [c["valueQuantity"] for c in o.get("component", []) if "valueQuantity" in c]
    for q in quantities:
        if q.get("system") != UCUM or not q.get("code"):
            errs.append(f"valueQuantity without UCUM system and code: {q}")
    for c in cs:
        if c in PROFILES:
            unit = o.get("valueQuantity", {}).get("code")
            if "dataAbsentReason" not in o and unit not in PROFILES[c]:
                errs.append(f"{c}: unit {unit!r} not in {sorted(PROFILES[c])}")
    if "59408-5" in cs and "2708-6" not in cs:
        errs.append("oxygen saturation without the fixed 2708-6 coding")
    if "85354-9" in cs:
        comp = {cc: c for c in o.get("component", []) for cc in codes(c.get("code"))}
        for need in ("8480-6", "8462-4"):
            c = comp.get(need)
            if c is None:
                errs.append(f"blood pressure without component {need}")
            elif "dataAbsentReason" not in c and c.get("valueQuantity", {}).get("code") != "mm[Hg]":
                errs.append(f"blood pressure component {need} not in mm[Hg]")
    return errs


def check(o):
    errs = []
    errs += [f"schema: {e.message}" for e in VALIDATOR.iter_errors(o)][:5]
    try:
        errs += [f"fhirkit: {i}" for i in fhirkit.validate(o)]
    except Exception as e:  # noqa: BLE001 - report any validator failure as a finding
        errs.append(f"fhirkit: {e}")
    try:
        Observation.parse_obj(o)
    except Exception as e:  # noqa: BLE001
        errs.append("fhir.resources: " + str(e).replace("\n", " ")[:300])
    try:
        errs += [f"profile {e}" for e in profile_checks(o)]
    except Exception as e:  # noqa: BLE001
        errs.append(f"fhirpath: {e}")
    return errs


def observations(doc):
    if isinstance(doc, list):
        for d in doc:
            yield from observations(d)
    elif doc.get("resourceType") == "Bundle":
        for e in doc.get("entry", []):
            yield e.get("resource", {})
    else:
        yield doc


def main(argv):
    expect_invalid = "--expect-invalid" in argv
    paths = [Path(a) for a in argv if a != "--expect-invalid"]
    files = []
    for p in paths:
        files += sorted(p.glob("*.json")) if p.is_dir() else [p]
    passed = failed = 0
    for f in files:
        for i, o in enumerate(observations(json.loads(f.read_text()))):
            errs = check(o)
            good = bool(errs) if expect_invalid else not errs
            label = f"{f.name}#{i}"
            if good:
                passed += 1
                print(f"ok   {label}" + (f" (rejected: {errs[0][:100]})" if expect_invalid else ""))
            else:
                failed += 1
                print(f"FAIL {label}: " + ("accepted an invalid resource" if expect_invalid else "; ".join(errs)))
    if passed + failed == 0:
        print("no Observations found")
        failed = 1
    print(f"fhir-validate: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
