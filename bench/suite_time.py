"""Where the test suite's time goes: wall time of a tier and the summed time of each test file.

    python bench/suite_time.py                     # the full suite, as CI runs it
    python bench/suite_time.py --tier fast         # python -m pytest -q -m "not slow"
    python bench/suite_time.py --workers 0         # the full suite in one process, for a ratio
    python bench/suite_time.py --from-junit run.xml --wall 1016 --label ...   # record a run made by hand

Writes ``bench/results/test-suite-<label>-<date>.json``: the command, the wall time, passed /
failed / skipped counts, the machine (cores, load average at the start and end, so that a run on
a busy machine says so) and the seconds per test file, largest first. Compare two runs side by
side only when they were made on the same machine under the same load.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def per_file_seconds(junit: Path) -> tuple[dict[str, float], dict[str, int]]:
    """Summed test time per file (setup and teardown included) and the outcome counts of a JUnit XML."""
    seconds: Counter[str] = Counter()
    counts = Counter({"passed": 0, "failed": 0, "skipped": 0})
    for case in ET.parse(junit).getroot().iter("testcase"):
        seconds[case.get("classname", "?")] += float(case.get("time", 0))
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return {name: round(value, 1) for name, value in seconds.most_common()}, dict(counts)


def machine() -> dict[str, Any]:
    return {
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def run_suite(command: list[str], junit: Path) -> float:
    started = time.monotonic()
    subprocess.run([*command, f"--junitxml={junit}"], cwd=ROOT, check=False)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", choices=["full", "fast"], default="full")
    parser.add_argument("--workers", type=int, help="pytest-xdist workers (default: the suite's own setting)")
    parser.add_argument("--from-junit", type=Path, help="record a run made by hand from its JUnit XML")
    parser.add_argument("--wall", type=float, help="with --from-junit: that run's wall time in seconds")
    parser.add_argument("--command", help="with --from-junit: the command that made it")
    parser.add_argument("--label", default="cpu", help="a name for the machine or the run, in the file name")
    parser.add_argument("--note", default="", help="what else a reader should know (the machine's load, the commit)")
    args = parser.parse_args()

    before = machine()
    if args.from_junit:
        if args.wall is None or not args.command:
            parser.error("--from-junit needs --wall and --command")
        junit, wall, command = args.from_junit, args.wall, args.command.split()
    else:
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        if args.tier == "fast":
            command += ["-m", "not slow"]
        if args.workers is not None:
            command += ["-n", str(args.workers)]
        junit = Path(tempfile.mkdtemp(prefix="suite-")) / "junit.xml"
        wall = run_suite(command, junit)
    files, counts = per_file_seconds(junit)
    report = {
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["python", *command[1:]] if command[0] == sys.executable else command),
        "wall_seconds": round(wall, 1),
        "summed_test_seconds": round(sum(files.values()), 1),
        "counts": counts,
        "machine_at_start": before,
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "note": args.note,
        "seconds_per_file": files,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"test-suite-{args.label}-{report['date']}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['command']}: {report['wall_seconds']:.0f} s wall, {counts}; {out.relative_to(ROOT)}")
    for name, seconds in list(files.items())[:10]:
        print(f"  {seconds:8.1f} s  {name}")


if __name__ == "__main__":
    main()
