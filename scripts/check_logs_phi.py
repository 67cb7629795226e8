#!/usr/bin/env python3
"""No patient id, device id or token in the logs at INFO or above (issue #11).

Usage: check_logs_phi.py [--min-level LEVEL] [DIR]   (default: INFO, target/test-logs)
       check_logs_phi.py --self-test  (proves the check can fail, and does not cry wolf)

The end-to-end test harness (tests/common/mod.rs) saves the stdout+stderr of every carewatch
process it starts as DIR/<test>.<n>-<what>.log, and writes every patient id, device id and token it
creates or uses to DIR/<test>.ids (`kind<TAB>value` lines). This script reads all of them and fails,
listing file:line, when a log record at INFO, WARN or ERROR contains any recorded id or token.
DEBUG and TRACE records are allowed to carry ids (they are off in production). `--min-level DEBUG`
over logs of a run with CAREWATCH_TEST_LOG=debug shows the check finding real ids in real records.

Records: tracing's text format (`<timestamp>  INFO target: message k=v`) or its JSON format (one
object a line with a "level" key), on stderr. A line that is not a record start continues the
previous record (multi-line messages) and has its level. The harness marks the process's stdout
lines `[stdout] `: console output with no level (listening addresses, replay summaries, and the
`admin token:` line `carewatch serve` prints once, on first start, by design); they do not fail
the check, but those carrying an id or token are counted in a note.

Matching: each id must appear as a whole token -- not preceded or followed by a letter, digit,
`_` or `-` -- so patient `alice` is found in `patient=alice`, `"alice"` or `/patients/alice/`, but
not in `malice`, `alice_smith` or `alice-2`, and device `w1` is not found in `w10` or `hw1`. Ids of
a single character would match ordinary words, so they are reported as unusable and skipped (the
harness does not use any). The ids of all tests are checked against the logs of all tests.

Shapes: besides the recorded ids, any JSON Web Token (`eyJ…`.`eyJ…`.`…`, whoever issued it) and
any value of carewatch's session or sign-in cookies (`__Host-carewatch-session=…`) in a record at
INFO or above is a finding too, so a token the harness never saw (one a browser or an identity
provider made) cannot slip through.
"""
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR")
CHECKED = {"INFO", "WARN", "ERROR"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# tracing-subscriber's fmt: optional timestamp, then the level, padded.
TEXT_RECORD = re.compile(r"^\s*(?:\d{4}-\d\d-\d\dT\S+\s+)?(TRACE|DEBUG|INFO|WARN|ERROR)\s")
BOUND = r"A-Za-z0-9_\-"
STDOUT = "[stdout] "  # tests/common/mod.rs STDOUT
# Secrets recognised by their shape (see the docstring).
SHAPES = re.compile(
    r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"
    r"|__Host-carewatch-(?:session|login)=[A-Za-z0-9_-]{8,}"
)


def load_ids(d: Path):
    """{value: kind} from every *.ids sidecar in d."""
    ids = {}
    for f in sorted(d.glob("*.ids")):
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            kind, _, value = line.partition("\t")
            if not value:
                raise SystemExit(f"{f}:{n}: expected kind<TAB>value, got {line!r}")
            ids.setdefault(value, kind)
    return ids


def matcher(ids):
    usable = {v: k for v, k in ids.items() if len(v) > 1}
    if not usable:
        return None, usable
    # Longest first, so a longer id wins over one that is its prefix.
    alts = "|".join(re.escape(v) for v in sorted(usable, key=len, reverse=True))
    return re.compile(f"(?<![{BOUND}])(?:{alts})(?![{BOUND}])"), usable


def record_level(line: str):
    """(level, text to search) if the line starts a record, else None."""
    s = line.strip()
    if s.startswith("{"):
        try:
            o = json.loads(s)
        except ValueError:
            o = None
        if isinstance(o, dict) and isinstance(o.get("level"), str):
            o.pop("timestamp", None)
            return o["level"].upper(), json.dumps(o, ensure_ascii=False)
    m = TEXT_RECORD.match(line)
    if m:
        return m.group(1), line[m.end():]
    return None


def check(d: Path, checked=CHECKED):
    """Findings (file:line messages) for the logs in d, how many logs, ids and records were
    checked, and the console (stdout) lines that carry an id or token."""
    ids = load_ids(d)
    rx, usable = matcher(ids)
    logs = sorted(d.glob("*.log"))
    findings, records, console = [], 0, []
    for f in logs:
        level = None
        with f.open(errors="replace") as fh:
            for n, raw in enumerate(fh, 1):
                line = ANSI.sub("", raw.rstrip("\n"))
                if line.startswith(STDOUT):
                    if rx is not None and rx.search(line):
                        console.append(f"{f}:{n}: {line[:200]}")
                    continue
                rec = record_level(line)
                if rec:
                    level, text = rec
                    records += 1
                else:
                    text = line
                if level not in checked:
                    continue
                hits = sorted({m.group(0) for m in rx.finditer(text)}) if rx is not None else []
                what = [f"{usable[h]} {h!r}" for h in hits]
                what += [f"secret-shaped {m.group(0)[:40]!r}" for m in SHAPES.finditer(text)
                         if m.group(0) not in usable]
                if what:
                    findings.append(f"{f}:{n}: {level} record contains {', '.join(what)}: {line[:300]}")
    return findings, len(logs), len(usable), records, console


def main(argv):
    checked = CHECKED
    if argv[:1] == ["--min-level"] and len(argv) > 1 and argv[1].upper() in LEVELS:
        checked = set(LEVELS[LEVELS.index(argv[1].upper()):])
        argv = argv[2:]
    d = Path(argv[0]) if argv else Path("target/test-logs")
    if not d.is_dir():
        print(f"check_logs_phi: {d} does not exist (did the end-to-end tests run?)")
        return 1
    findings, nlogs, nids, records, console = check(d, checked)
    for v, k in sorted(load_ids(d).items()):
        if len(v) < 2:
            print(f"check_logs_phi: skipping the one-character {k} id {v!r} (matches words)")
    for x in findings:
        print(x)
    if nlogs == 0 or nids == 0:
        print(f"check_logs_phi: {nlogs} logs and {nids} ids in {d}: nothing was checked")
        return 1
    if console:
        print(f"check_logs_phi: note: {len(console)} console (stdout, no level) lines carry an id or "
              f"token, e.g. {console[0]}")
    print(f"check_logs_phi: {nlogs} logs ({records} records), {nids} ids and tokens: "
          f"{len(findings)} lines at {min(checked, key=LEVELS.index)} or above leak one")
    return 1 if findings else 0


# --self-test: crafted logs, each with the verdict the check must give.
SELF_IDS = "patient\talice\ndevice\tw1\ntoken\tcw_Zx9Q-secret_tok\npatient\t2022484408\ndevice\tx\n"
CASES = [
    # (name, log text, lines that must be reported)
    ("info_patient", "2026-11-30T01:00:00.000001Z  INFO carewatch_ingest::http: stored patient=alice n=3\n", [1]),
    ("warn_token", "2026-11-30T01:00:00Z  WARN carewatch::auth: bad token cw_Zx9Q-secret_tok\n", [1]),
    ("error_device_in_span",
     "2026-11-30T01:00:00Z ERROR request{uri=/v1/devices/w1/readings}: carewatch_ingest::http: failed\n", [1]),
    ("json_info_device", '{"timestamp":"2026-11-30T01:00:00Z","level":"INFO","fields":{"message":"ok",'
                         '"device":"w1"},"target":"carewatch_ingest::mqtt"}\n', [1]),
    ("continuation_of_info", "2026-11-30T01:00:00Z  INFO carewatch: rejected batch:\n  from 2022484408\n", [2]),
    ("debug_and_trace_may", "2026-11-30T01:00:00Z DEBUG carewatch_ingest: patient=alice device=w1\n"
                            "2026-11-30T01:00:00Z TRACE carewatch_ingest: token=cw_Zx9Q-secret_tok\n"
                            "   continued alice\n", []),
    ("word_boundaries", "2026-11-30T01:00:00Z  INFO carewatch: malice aliceblue alice_b alice-2 w10 hw1 "
                        "x-ray 12022484408 principal=3fa2c0d19e7b\n", []),
    ("console_lines", "[stdout] http listening on 127.0.0.1:1\n"
                      "2026-11-30T01:00:00Z  INFO carewatch: started\n"
                      "[stdout] admin token: cw_Zx9Q-secret_tok\n", []),
    ("console_line_inside_a_record", "2026-11-30T01:00:00Z  WARN carewatch: failed:\n"
                                     "[stdout] admin token: cw_Zx9Q-secret_tok\n"
                                     "  device w1 gone\n", [3]),
    ("info_jwt_nobody_recorded",
     "2026-11-30T01:00:00Z  INFO carewatch_auth: refused eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl\n", [1]),
    ("info_session_cookie", "2026-11-30T01:00:00Z  INFO carewatch: cookie: __Host-carewatch-session=Qk9HVVMtc2Vzc2lvbg\n", [1]),
    ("debug_jwt_may", "2026-11-30T01:00:00Z DEBUG carewatch_auth: eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln\n", []),
    ("cookie_name_alone", "2026-11-30T01:00:00Z  INFO carewatch: set __Host-carewatch-session= (cleared)\n", []),
    ("ansi_colours", "\x1b[2m2026-11-30T01:00:00Z\x1b[0m \x1b[32m INFO\x1b[0m carewatch: hello alice\n", [1]),
]


def self_test():
    failed = 0
    with tempfile.TemporaryDirectory() as t:
        base = Path(t)
        for name, text, want in CASES:
            d = base / name
            d.mkdir()
            (d / "t.ids").write_text(SELF_IDS)
            (d / "t.0-serve.log").write_text(text)
            findings, *_ = check(d)
            got = [int(x.split(":")[1]) for x in findings]
            # Through the command line as well: the exit code follows the verdict.
            rc = subprocess.run([sys.executable, __file__, str(d)], capture_output=True).returncode
            if got == want and rc == (1 if want else 0):
                print(f"ok: {name}: {'fails at line(s) ' + str(want) if want else 'passes'}")
            else:
                failed += 1
                print(f"SURPRISE: {name}: reported lines {got} (want {want}), exit {rc}")
                for x in findings:
                    print("   ", x)
        lowered = [sys.executable, __file__, "--min-level", "debug", str(base / "debug_and_trace_may")]
        if subprocess.run(lowered, capture_output=True).returncode == 1:
            print("ok: with --min-level debug the DEBUG record fails")
        else:
            failed += 1
            print("SURPRISE: --min-level debug passed a DEBUG record with ids")
        empty = base / "empty"
        empty.mkdir()
        if subprocess.run([sys.executable, __file__, str(empty)], capture_output=True).returncode == 1:
            print("ok: a directory without logs or ids fails (nothing was checked)")
        else:
            failed += 1
            print("SURPRISE: an empty log directory passed")
    print(f"check_logs_phi self-test: {len(CASES) + 2 - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(self_test() if args[:1] == ["--self-test"] else main(args))
