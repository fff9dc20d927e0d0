#!/usr/bin/env python3
"""Run the test suite N times and list every test that failed at least once (`make test-repeat N=5`).

A flaky test is one whose outcome depends on something other than the code:
the machine's speed, load, timing, or the order tests ran in. Running the
whole suite several times is the cheapest way to find one. Each run writes a
JUnit XML report; at the end this prints, for every test that failed or
errored in any run, in which runs and the first line of its message, then
each run's summary. Extra pytest arguments go after `--`, e.g.

    scripts/test_repeat.py 5 -- --random-order      # a new random order each run
    scripts/test_repeat.py 3 -- tests/integration   # one directory only
    scripts/test_repeat.py 2 --stress 1             # with stress-ng keeping one CPU busy

`--stress N` runs `stress-ng --cpu N` for the whole of each run: a test that
passes only on an idle machine fails there.

The exit status is 0 only if every run passed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path


def outcomes(report: Path) -> tuple[dict[str, str], dict[str, int]]:
    """(test id -> first line of its failure) and the totals of one JUnit XML report."""
    failed: dict[str, str] = {}
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    try:
        root = ET.parse(report).getroot()  # noqa: S314 — pytest's own report, written by this script's child
    except (OSError, ET.ParseError) as exc:
        return {"<the run itself>": f"no report: {exc}"}, totals
    for suite in root.iter("testsuite"):
        for key in totals:
            totals[key] += int(suite.get(key, 0))
    for case in root.iter("testcase"):
        for tag in ("failure", "error"):
            node = case.find(tag)
            if node is not None:
                name = f"{case.get('classname', '')}::{case.get('name', '')}"
                msg = (node.get("message") or node.text or tag).strip().splitlines()
                failed[name] = f"{tag}: {msg[0][:160] if msg else tag}"
    return failed, totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=int, help="how many times to run the suite")
    parser.add_argument("pytest_args", nargs="*", help="after --: arguments for pytest")
    parser.add_argument("--stress", type=int, default=0, metavar="CPUS",
                        help="keep CPUS processors busy with stress-ng during every run (default: 0, none)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter with pytest (default: this one)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("runs must be at least 1")
    seen: dict[str, list[int]] = defaultdict(list)
    first_message: dict[str, str] = {}
    summaries = []
    with tempfile.TemporaryDirectory(prefix="floodguard-repeat-") as tmp:
        for run in range(1, args.runs + 1):
            report = Path(tmp) / f"run{run}.xml"
            print(f"== run {run} of {args.runs}", flush=True)
            t0 = time.monotonic()
            load = (subprocess.Popen(["stress-ng", "--cpu", str(args.stress), "--quiet"])
                    if args.stress else None)
            try:
                code = subprocess.call([args.python, "-m", "pytest", f"--junitxml={report}", *args.pytest_args])
            finally:
                if load is not None:
                    load.terminate()
                    load.wait()
            seconds = time.monotonic() - t0
            failed, totals = outcomes(report)
            if code not in (0, 1) and not failed:
                failed = {f"<run {run}>": f"pytest exited with status {code} (collection or internal error)"}
            for name, msg in failed.items():
                seen[name].append(run)
                first_message.setdefault(name, msg)
            summaries.append(f"run {run}: exit {code}, {totals['tests']} tests, {totals['failures']} failed, "
                             f"{totals['errors']} errors, {totals['skipped']} skipped, {seconds:.0f} s"
                             + (f", stress-ng --cpu {args.stress}" if args.stress else ""))
    print("\n== tests that failed at least once")
    if not seen:
        print("none")
    for name, runs in sorted(seen.items()):
        print(f"{name}: failed in run(s) {', '.join(map(str, runs))} of {args.runs}: {first_message[name]}")
    print("\n== runs")
    print("\n".join(summaries))
    return 1 if seen else 0


if __name__ == "__main__":
    sys.exit(main())
