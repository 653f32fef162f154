#!/usr/bin/env python3
"""Reads `go tool test2json` output of a Windows test binary run under Wine
and decides the result. One Wine 8 gap is not ours: Go's os.RemoveAll asks
NtSetInformationFile for FileDispositionInformationEx, which Wine 8 does not
implement ("Invalid function"), so every t.TempDir cleanup fails. A test
whose only failure is that cleanup line counts as passed, and is listed.
Everything else counts as the test says. Skips are printed with their reason.
Exit status 1 when a test really failed."""
import json
import re
import sys

CLEANUP = re.compile(r"TempDir RemoveAll cleanup: .*Invalid function")
# An error or log line of a test: "    name_test.go:12: text".
REPORT = re.compile(r"^\s+\S+\.go:\d+: ")
# What internal/wine.SkipIf says.
SKIP = re.compile(r"\.go:\d+: under Wine: ")

out = {}
result = {}
for raw in sys.stdin:
    try:
        ev = json.loads(raw)
    except ValueError:
        print(raw, end="")
        continue
    test = ev.get("Test")
    if ev.get("Action") == "output" and test:
        out.setdefault(test, []).append(ev["Output"])
    elif ev.get("Action") in ("pass", "fail", "skip") and test:
        result[test] = ev["Action"]
    elif ev.get("Action") == "output":
        sys.stdout.write(ev["Output"])

failed, excused, passed = [], [], 0
for test, res in result.items():
    lines = out.get(test, [])
    if res == "skip":
        why = [l.strip() for l in lines if REPORT.match(l)]
        print(f"SKIP {test}: {' '.join(why) or 'no reason given'}")
    elif res == "pass":
        passed += 1
    elif any(t.startswith(test + "/") and result[t] == "fail" for t in result):
        pass  # its failing subtest is counted
    else:
        reports = [l for l in lines if REPORT.match(l) and not CLEANUP.search(l)]
        cleanup = any(CLEANUP.search(l) for l in lines)
        if cleanup and not reports:
            excused.append(test)
        elif cleanup and all(SKIP.search(l) for l in reports):
            # Skipped by wine.SkipIf, then the cleanup failed.
            print(f"SKIP {test}: {' '.join(l.strip() for l in reports)}")
        else:
            failed.append(test)
            sys.stdout.write("".join(lines))

if excused:
    print(f"passed, but t.TempDir could not be removed under Wine (os.RemoveAll needs FileDispositionInformationEx): {' '.join(excused)}")
print(f"{passed + len(excused)} passed, {len(failed)} failed")
if failed:
    print("FAIL: " + " ".join(failed))
    sys.exit(1)
