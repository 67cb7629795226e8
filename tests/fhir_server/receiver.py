"""A small FHIR R4 server for the FHIR destination tests: it validates everything it receives
with tools nobody on this project wrote (fhir.resources 6.4, the strict R4 models; the official
R4 JSON schema for the Bundle envelope) and keeps what it accepts in memory.

  POST /            a batch or transaction Bundle; each entry must be a conditional update
                    `PUT Observation|Communication?identifier=system|value` (R4 3.1.0.4.3: no match -> create
                    201, one match -> update 200, several -> 412). An invalid resource gets 400
                    with an OperationOutcome; a resource whose device is in --refuse-device gets
                    422 with an OperationOutcome (in a batch-response entry, or for the whole
                    transaction). --fail-first N answers 503 to the first N Bundles.
  GET /Observation  search: identifier=system|value, patient=, _count (searchset Bundle)
  GET /Communication  search: identifier=system|value, patient=, status=, _count
  PUT /Device/{id}  create or update a Device (validated like the rest); GET /Device/{id}
  GET /Device       search: identifier=[system|]value (searchset Bundle) — for Lookup mode
  PUT /CareTeam/{id}  likewise; GET /CareTeam search: subject=Patient/a[,Patient/b…] (OR),
                    status=, category=[system|]code (searchset Bundle) — Lookup mode's care teams
  GET /_stats       {"creates", "updates", "resources" (of Observations), "bundles", "device_searches",
                    "communication_creates", "communication_updates", "communications"} for the tests

A Communication whose subject is a patient given with --refuse-alerts-of gets 422 likewise.

Usage: receiver.py [--refuse-device ID]... [--refuse-alerts-of PATIENT]... [--fail-first N] [--delay-ms MS (per Bundle)]; prints `listening on PORT`.
"""
import json
import sys
import time
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import jsonschema
from fhir.resources import construct_fhir_element

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "fixtures/data/fhir-examples/fhir.r4.schema.json").read_text())
SCHEMA.pop("oneOf", None)
BUNDLE = jsonschema.Draft6Validator({**SCHEMA, "$ref": "#/definitions/Bundle"})

LOCK = threading.Lock()
STORE = {}  # Observation id -> resource (with id and meta.versionId)
COMMS = {}  # Communication id -> resource
TYPES = {"Observation": STORE, "Communication": COMMS}
DEVICES = {}  # id -> Device
CARETEAMS = {}  # id -> CareTeam
PUT_TYPES = {"Device": DEVICES, "CareTeam": CARETEAMS}
STATS = {"creates": 0, "updates": 0, "bundles": 0, "device_searches": 0, "careteam_searches": 0,
         "communication_creates": 0, "communication_updates": 0}
REFUSE = set()
REFUSE_PATIENT = set()  # Communications about these patients are refused
FAIL_FIRST = [0]
DELAY = [0.0]


def outcome(code, text):
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": text}]}


def matches(res, system, value):
    return any(i.get("system") == system and i.get("value") == value for i in res.get("identifier", []))


def put_conditional(entry):
    """(status, outcome or None) for one entry; stores it when valid."""
    req = entry.get("request", {})
    url = req.get("url", "")
    res = entry.get("resource")
    rtype = url.split("?", 1)[0]
    if req.get("method") != "PUT" or rtype not in TYPES or not url.startswith(rtype + "?identifier="):
        return "400 Bad Request", outcome("not-supported", "only conditional updates of Observation or Communication"), None
    if (res or {}).get("resourceType") != rtype:
        return "400 Bad Request", outcome("invalid", "the resource is not of the URL's type"), None
    system, _, value = unquote(url.split("=", 1)[1]).partition("|")
    try:
        construct_fhir_element(rtype, res)
    except Exception as e:  # noqa: BLE001 - the validator's words go back to the client
        return "400 Bad Request", outcome("invalid", " ".join(str(e).split())[:300]), None
    if not matches(res, system, value):
        return "400 Bad Request", outcome("invalid", "the identifier in the URL is not the resource's"), None
    device = res.get("device", {}).get("reference", "").removeprefix("Device/")
    if device in REFUSE:
        return "422 Unprocessable Entity", outcome("business-rule", "this server does not take readings of that device"), None
    subject = res.get("subject", {}).get("reference", "").removeprefix("Patient/")
    if rtype == "Communication" and subject in REFUSE_PATIENT:
        return "422 Unprocessable Entity", outcome("business-rule", "this server does not take alerts about that patient"), None
    store = TYPES[rtype]
    prefix = "" if rtype == "Observation" else "communication_"
    with LOCK:
        found = [k for k, r in store.items() if matches(r, system, value)]
        if len(found) > 1:
            return "412 Precondition Failed", outcome("multiple-matches", "several resources match"), None
        if found:
            rid = found[0]
            version = int(store[rid]["meta"]["versionId"]) + 1
            STATS[prefix + "updates"] += 1
            status = "200 OK"
        else:
            rid = str(len(store) + 1)
            version = 1
            STATS[prefix + "creates"] += 1
            status = "201 Created"
        store[rid] = {**res, "id": rid, "meta": {**res.get("meta", {}), "versionId": str(version)}}
    return status, None, f"{rtype}/{rid}/_history/{version}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if DELAY[0]:
            time.sleep(DELAY[0])
        with LOCK:
            STATS["bundles"] += 1
            if FAIL_FIRST[0] > 0:
                FAIL_FIRST[0] -= 1
                return self.reply(503, outcome("transient", "try again"))
        try:
            bundle = json.loads(body)
        except ValueError:
            return self.reply(400, outcome("structure", "not JSON"))
        env = {**bundle, "entry": [{k: v for k, v in e.items() if k != "resource"} for e in bundle.get("entry", [])]}
        errs = [e.message for e in BUNDLE.iter_errors(env)]
        if errs or bundle.get("type") not in ("batch", "transaction"):
            return self.reply(400, outcome("invalid", (errs or ["not a batch or transaction"])[0][:300]))
        kind = bundle["type"]
        if kind == "transaction":
            # All or nothing: check every entry before storing any.
            for e in bundle.get("entry", []):
                device = e.get("resource", {}).get("device", {}).get("reference", "").removeprefix("Device/")
                if device in REFUSE:
                    return self.reply(422, outcome("business-rule", "this server does not take readings of that device"))
        out = []
        for e in bundle.get("entry", []):
            status, oo, location = put_conditional(e)
            r = {"status": status}
            if oo:
                r["outcome"] = oo
            if location:
                r["location"] = location
                r["etag"] = 'W/"' + location.rsplit("/", 1)[1] + '"'
            out.append({"response": r})
        self.reply(200, {"resourceType": "Bundle", "type": f"{kind}-response", "entry": out})

    def do_PUT(self):
        u = urlsplit(self.path)
        parts = u.path.strip("/").split("/")
        if len(parts) != 2 or parts[0] not in PUT_TYPES:
            return self.reply(404, outcome("not-found", "only PUT /Device/{id} and /CareTeam/{id}"))
        kind, store = parts[0], PUT_TYPES[parts[0]]
        try:
            res = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            construct_fhir_element(kind, res)
        except Exception as e:  # noqa: BLE001
            return self.reply(400, outcome("invalid", " ".join(str(e).split())[:300]))
        if res.get("id") != parts[1]:
            return self.reply(400, outcome("invalid", kind + ".id differs from the URL"))
        with LOCK:
            created = parts[1] not in store
            store[parts[1]] = res
        self.reply(201 if created else 200, res)

    def devices(self, u, q):
        parts = u.path.strip("/").split("/")
        if len(parts) == 2:
            with LOCK:
                d = DEVICES.get(parts[1])
            return self.reply(200, d) if d else self.reply(404, outcome("not-found", "no such Device"))
        with LOCK:
            found = list(DEVICES.values())
            STATS["device_searches"] += 1
        if "identifier" in q:
            want = q["identifier"]
            system, bar, value = want.partition("|")
            if not bar:
                system, value = None, want
            found = [d for d in found if any(i.get("value") == value and (system is None or i.get("system") == system)
                                             for i in d.get("identifier", []))]
        self.reply(200, {"resourceType": "Bundle", "type": "searchset", "total": len(found),
                         "entry": [{"resource": d, "search": {"mode": "match"}} for d in found]})

    def care_teams(self, q):
        with LOCK:
            found = list(CARETEAMS.values())
            STATS["careteam_searches"] += 1
        if "subject" in q:
            want = {"Patient/" + s.removeprefix("Patient/") for s in q["subject"].split(",")}
            found = [t for t in found if t.get("subject", {}).get("reference") in want]
        if "status" in q:
            found = [t for t in found if t.get("status") in q["status"].split(",")]
        if "category" in q:
            system, bar, code = q["category"].partition("|")
            if not bar:
                system, code = None, q["category"]
            found = [t for t in found if any(c.get("code") == code and (system is None or c.get("system") == system)
                                             for cat in t.get("category", []) for c in cat.get("coding", []))]
        self.reply(200, {"resourceType": "Bundle", "type": "searchset", "total": len(found),
                         "entry": [{"resource": t, "search": {"mode": "match"}} for t in found]})

    def do_GET(self):
        u = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        if u.path == "/_stats":
            with LOCK:
                return self.reply(200, {**STATS, "resources": len(STORE), "communications": len(COMMS)})
        if u.path == "/Device" or u.path.startswith("/Device/"):
            return self.devices(u, q)
        if u.path == "/CareTeam":
            return self.care_teams(q)
        store = TYPES.get(u.path.strip("/"))
        if store is None:
            return self.reply(404, outcome("not-found", "no such path"))
        with LOCK:
            found = list(store.values())
        if "status" in q:
            found = [r for r in found if r.get("status") in q["status"].split(",")]
        if "identifier" in q:
            system, _, value = q["identifier"].partition("|")
            found = [r for r in found if matches(r, system, value)]
        if "patient" in q:
            found = [r for r in found if r.get("subject", {}).get("reference") == "Patient/" + q["patient"].removeprefix("Patient/")]
        count = int(q.get("_count", "1000"))
        self.reply(200, {"resourceType": "Bundle", "type": "searchset", "total": len(found),
                         "entry": [{"resource": r, "search": {"mode": "match"}} for r in found[:count]]})


def main(argv):
    i = 0
    while i < len(argv):
        if argv[i] == "--refuse-device":
            REFUSE.add(argv[i + 1])
            i += 2
        elif argv[i] == "--refuse-alerts-of":
            REFUSE_PATIENT.add(argv[i + 1])
            i += 2
        elif argv[i] == "--delay-ms":
            DELAY[0] = int(argv[i + 1]) / 1000
            i += 2
        elif argv[i] == "--fail-first":
            FAIL_FIRST[0] = int(argv[i + 1])
            i += 2
        else:
            sys.exit(f"unknown argument {argv[i]}")
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening on {srv.server_address[1]}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
