"""External validation of FHIR R4 Observations with tools nobody on this project wrote.

Usage: fhir_validate.py [--expect-invalid] PATH...
Each PATH is a JSON file or a directory of *.json: an Observation, a Bundle of them, or an array.
A CapabilityStatement gets the structural checks and its invariants (cpb-1, -2, -9, -12, -14).
The other resources carewatch emits (Patient, Device, Communication, Subscription, Parameters
such as a SubscriptionStatus, OperationOutcome), alone or as Bundle entries, get the structural
checks (schema, fhirkit, fhir.resources).
Every Observation is checked by
  - schema:         the official R4 JSON schema (fixtures/data/fhir-examples/fhir.r4.schema.json);
  - fhirkit:        fhirkit-rs, which also catches value[x] exclusivity;
  - fhir.resources: 6.4.0, the strict R4 pydantic models;
  - status, ucum:   status in the required value set; every valueQuantity is UCUM with a code;
  - the HL7 vital-signs rules (shared/reference.md §2.3, §3), by FHIRPath (fhirpathpy, R4 model):
    vs-1, vs-2, vs-3, effective, subject (a Patient), component units (ucum-vitals-common) for
    every Observation with a vital-signs profile code or the vital-signs category; VSCat and the
    per-profile LOINC + UCUM rules for those with a profile code. Other codes (steps, HRV,
    glucose, ...) with another category get only the structural checks, status and ucum.
A Bundle's envelope (without its entries' resources) gets the structural checks as well.
Prints one line per resource and then `fhir-validate: N passed, M failed`. Exit 0 iff all
passed; with --expect-invalid, iff every Observation FAILED at least one check.
"""
import json
import sys
from pathlib import Path

import fhirkit
import jsonschema
from fhir.resources import construct_fhir_element
from fhirpathpy import evaluate
from fhirpathpy.models import models

REPO = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((REPO / "fixtures/data/fhir-examples/fhir.r4.schema.json").read_text())
SCHEMA.pop("oneOf", None)
OTHER = ("Patient", "Device", "Communication", "Subscription", "Parameters", "OperationOutcome")
VALIDATORS = {t: jsonschema.Draft6Validator({**SCHEMA, "$ref": f"#/definitions/{t}"})
              for t in ("Observation", "Bundle", "CapabilityStatement") + OTHER}

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
MDC = "urn:iso:std:iso:11073:10101"
SD = "http://hl7.org/fhir/StructureDefinition/"
VS_CAT = ("category.coding.where(system='http://terminology.hl7.org/CodeSystem/observation-category'"
          " and code='vital-signs').exists()")
STATUS = "registered preliminary final amended corrected cancelled entered-in-error unknown".split()
VITALS_COMMON = {"%", "cm", "[in_i]", "kg", "g", "[lb_av]", "Cel", "[degF]", "mm[Hg]", "/min", "kg/m2", "m2"}
# reference.md §3.2: fixed LOINC -> (profile, allowed valueQuantity.code; None = no value[x] rule)
PROFILES = {
    "85353-1": ("vitalspanel", None), "9279-1": ("resprate", {"/min"}),
    "8867-4": ("heartrate", {"/min"}), "2708-6": ("oxygensat", {"%"}),
    "8310-5": ("bodytemp", {"Cel", "[degF]"}), "8302-2": ("bodyheight", {"cm", "[in_i]"}),
    "9843-4": ("headcircum", {"cm", "[in_i]"}), "29463-7": ("bodyweight", {"kg", "g", "[lb_av]"}),
    "39156-5": ("bmi", {"kg/m2"}), "85354-9": ("bp", None),
}
PROFILE_NAMES = {name for name, _ in PROFILES.values()}
SPO2 = {(LOINC, "59408-5"), (LOINC, "20564-1"), (LOINC, "2708-6"), (MDC, "150456")}
# vital-signs base profile invariants (StructureDefinition-vitalsigns.json, 4.0.1)
VS_RULES = {  # name -> (FHIRPath, message)
    "vs-1": ("effective.ofType(dateTime).all($this.toString().length() >= 8)", "dateTime not day-precise"),
    "vs-2": ("(component.empty() and hasMember.empty()) implies (dataAbsentReason.exists() or value.exists())",
             "no value[x], dataAbsentReason, component or hasMember"),
    "effective": ("effective.exists()", "effective[x] missing"),
    "subject": ("subject.reference.matches('^(https?://.+/)?Patient/[A-Za-z0-9.-]{1,64}(/_history/[A-Za-z0-9.-]{1,64})?$')"
                " or subject.type = 'Patient'", "subject missing or not a Patient reference"),
}


def holds(node, expr):
    return evaluate(node, expr, {}, models["r4"]) == [True]


def codings(concept):
    return {(c.get("system"), c.get("code")) for c in (concept or {}).get("coding", [])}


def structural(doc, rtype):
    """schema, fhirkit and fhir.resources on one resource; returns [(check, message)]."""
    errs = [("schema", f"{'/'.join(map(str, e.absolute_path))}: {e.message}"[:200])
            for e in VALIDATORS[rtype].iter_errors(doc)][:5]
    try:
        errs += [("fhirkit", f"{i.path}: {i.message}") for i in fhirkit.validate(doc)]
    except Exception as e:  # noqa: BLE001 - a crashing validator is a finding too
        errs.append(("fhirkit", str(e)))
    try:
        construct_fhir_element(rtype, doc)
    except Exception as e:  # noqa: BLE001
        errs.append(("fhir.resources", " ".join(str(e).split())[:300]))
    return errs


def quantities(o):
    """(where, valueQuantity) for the Observation's value and each component's value."""
    qs = [("value", o["valueQuantity"])] if "valueQuantity" in o else []
    return qs + [(f"component[{i}]", c["valueQuantity"])
                 for i, c in enumerate(o.get("component", [])) if "valueQuantity" in c]


def profile_checks(o):
    errs = []
    cs = codings(o.get("code"))
    loinc = {c for s, c in cs if s == LOINC}
    profiles = {c: PROFILES[c] for c in loinc if c in PROFILES}
    spo2 = bool(cs & SPO2)
    declared = {p[len(SD):] for p in o.get("meta", {}).get("profile", []) if p.startswith(SD)}
    vital = bool(profiles) or spo2 or holds(o, VS_CAT) or bool(declared & (PROFILE_NAMES | {"vitalsigns"}))
    if not vital:
        return errs
    for name, (expr, msg) in VS_RULES.items():
        if not holds(o, expr):
            errs.append((name, msg))
    for i, c in enumerate(o.get("component", [])):
        if not holds(o, f"component[{i}].select(value.exists() or dataAbsentReason.exists())"):
            errs.append(("vs-3", f"component[{i}] has neither value[x] nor dataAbsentReason"))
    for where, q in quantities(o):
        if where != "value" and q.get("code") not in VITALS_COMMON:
            errs.append(("component-unit", f"{where} unit {q.get('code')!r} not in ucum-vitals-common"))
    if (profiles or spo2) and not holds(o, VS_CAT):
        errs.append(("VSCat", "no category coding observation-category#vital-signs"))
    for p in declared & PROFILE_NAMES:
        if p not in {name for name, _ in profiles.values()}:
            errs.append(("meta.profile", f"declares {p} but code lacks its fixed LOINC"))
    if spo2 and "2708-6" not in loinc:
        errs.append(("oxygensat", "oxygen saturation without the fixed LOINC 2708-6 coding"))
    for code, (name, units) in profiles.items():
        unit = o.get("valueQuantity", {}).get("code")
        if units and "dataAbsentReason" not in o and unit not in units:
            errs.append((name, f"{code}: valueQuantity unit {unit!r} not in {sorted(units)}"))
    if "85354-9" in profiles:
        comps = {cc: c for c in o.get("component", []) for s, cc in codings(c.get("code")) if s == LOINC}
        for need in ("8480-6", "8462-4"):
            c = comps.get(need)
            if c is None:
                errs.append(("bp", f"no component {need}"))
            elif "dataAbsentReason" not in c and c.get("valueQuantity", {}).get("code") != "mm[Hg]":
                errs.append(("bp", f"component {need} neither mm[Hg] valueQuantity nor dataAbsentReason"))
    return errs


def check(o):
    if not isinstance(o, dict) or o.get("resourceType") != "Observation":
        return [("resourceType", "not an Observation")]
    errs = structural(o, "Observation")
    try:
        if not holds(o, f"status in ({' | '.join(repr(s) for s in STATUS)})"):
            errs.append(("status", f"{o.get('status')!r} not in the observation-status value set"))
        errs += [("ucum", f"{w}: {q}") for w, q in quantities(o) if q.get("system") != UCUM or not q.get("code")]
        errs += profile_checks(o)
    except Exception as e:  # noqa: BLE001
        errs.append(("fhirpath", repr(e)))
    return errs


# CapabilityStatement invariants (R4 4.0.1), by FHIRPath.
CPB_RULES = {
    "cpb-1": ("rest.exists() or messaging.exists() or document.exists()", "no rest, messaging or document"),
    "cpb-2": ("(description.count() + software.count() + implementation.count()) > 0",
              "none of description, software, implementation"),
    "cpb-14": ("(kind != 'instance') or implementation.exists()", "kind instance without implementation"),
    "cpb-9": ("rest.select(mode).isDistinct()", "rest modes not unique"),
    "cpb-12": ("rest.resource.select(type).isDistinct()", "resource types not unique"),
    "cpb-search": ("rest.resource.all(searchParam.select(name).isDistinct())", "search parameters not unique"),
    "fhirVersion": ("fhirVersion = '4.0.1'", "fhirVersion is not 4.0.1"),
}


def capability_checks(c):
    errs = []
    try:
        for name, (expr, msg) in CPB_RULES.items():
            if not holds(c, expr):
                errs.append((name, msg))
    except Exception as e:  # noqa: BLE001
        errs.append(("fhirpath", repr(e)))
    return errs


def resources(name, doc):
    """(label, resource type, resource) for everything in one file."""
    if isinstance(doc, list):
        for i, d in enumerate(doc):
            yield f"{name}[{i}]", "Observation", d
    elif isinstance(doc, dict) and doc.get("resourceType") in ("CapabilityStatement",) + OTHER:
        yield name, doc["resourceType"], doc
    elif isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
        env = {**doc, "entry": [{k: v for k, v in e.items() if k != "resource"} for e in doc.get("entry", [])]}
        yield f"{name} (Bundle)", "Bundle", env
        for i, e in enumerate(doc.get("entry", [])):
            if "resource" not in e and doc.get("type") == "history":
                continue  # a notification entry of an id-only or empty Subscription payload
            res = e.get("resource")
            kind = res.get("resourceType") if isinstance(res, dict) else None
            yield f"{name} entry[{i}]", kind if kind in OTHER else "Observation", res
    else:
        yield name, "Observation", doc


def main(argv):
    expect_invalid = "--expect-invalid" in argv
    files = []
    for p in (Path(a) for a in argv if a != "--expect-invalid"):
        files += sorted(p.glob("*.json")) if p.is_dir() else [p]
    passed = failed = 0
    for f in files:
        try:
            items = list(resources(f.name, json.loads(f.read_text())))
        except (OSError, ValueError) as e:
            items = [(f.name, "unreadable", str(e))]
        for label, rtype, res in items:
            if rtype == "unreadable":
                errs = [("json", res)]
            elif rtype == "Bundle":
                if expect_invalid:  # the envelope is not what the invalid cases are about
                    continue
                errs = structural(res, "Bundle")
            elif rtype in OTHER:
                if expect_invalid:
                    continue
                errs = structural(res, rtype)
            elif rtype == "CapabilityStatement":
                if expect_invalid:
                    continue
                # The schema is the R4 4.0.0 build: its fhirVersion enum lacks 4.0.1 (reference.md
                # §2); that one finding is dropped, everything else counts.
                errs = [(c, m) for c, m in structural(res, rtype)
                        if not (c == "schema" and m.startswith("fhirVersion: '4.0.1' is not one of"))]
                errs += capability_checks(res)
            else:
                errs = check(res)
            msg = "; ".join(f"{c}: {m}" for c, m in errs)
            if rtype == "unreadable" or bool(errs) != expect_invalid:
                failed += 1
                why = "accepted, but it is invalid" if expect_invalid and rtype != "unreadable" else msg
                print(f"FAIL {label}: {why}")
            else:
                passed += 1
                print(f"OK   {label}" + (f" (rejected: {msg})" if expect_invalid else ""))
    if passed + failed == 0:
        print("FAIL no Observations found")
        failed = 1
    print(f"fhir-validate: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
