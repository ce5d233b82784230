"""Run the README's test command on fresh clones, several times in a row, some runs beside a CPU-bound process.

What CI does (``bash .ci/run`` on a clean clone), repeated: a suite that passes once on an idle machine may still
fail on a busy one. Each run clones the repository's HEAD into a new folder (new virtualenv, new npm install, as a
newcomer's machine would), runs ``bash .ci/run`` there and records its wall time, exit code, the pytest summary and
the slowest tests. ``--load-runs`` names the runs that get a busy core: a process spinning in a loop, started in
its own process group before the run and stopped by that group (pid) after it, also when the run fails.

    .venv/bin/python dev/soak.py --runs 3 --load-runs 2 --out bench/results/suite-soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPIN = "while True: pass"


def start_load() -> subprocess.Popen:
    """One core kept busy by a process of its own group, so it can be stopped through it."""
    return subprocess.Popen([sys.executable, "-c", SPIN], start_new_session=True)


def stop_load(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def slowest(output: str, limit: int = 10) -> list[str]:
    """The lines of pytest's ``slowest durations`` section (``--durations``), slowest first."""
    lines = output.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if "slowest" in line and "durations" in line)
    except StopIteration:
        return []
    found = [line.strip() for line in lines[start + 1 :] if re.match(r"^\s*\d+(\.\d+)?s (call|setup|teardown)", line)]
    return found[:limit]


def one_run(number: int, loaded: bool, logs: Path, timeout_s: float) -> dict[str, object]:
    clone = Path(tempfile.mkdtemp(prefix=f"soak-{number}-"))
    log = logs / f"run-{number}.log"
    load = start_load() if loaded else None
    started = time.monotonic()
    try:
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=300)
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=clone, check=True, capture_output=True, text=True
        ).stdout.strip()
        with open(log, "wb") as out:
            done = subprocess.run(
                ["bash", ".ci/run"], cwd=clone, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s, check=False
            )
        wall = time.monotonic() - started
    finally:
        if load is not None:
            stop_load(load)
        shutil.rmtree(clone, ignore_errors=True)
    output = log.read_text(errors="replace")
    summary = next(
        (line.strip("= ") for line in reversed(output.splitlines()) if re.search(r"\d+ (passed|failed)", line)), ""
    )
    return {
        "run": number,
        "commit": commit,
        "loaded": loaded,
        "exit_code": done.returncode,
        "wall_s": round(wall, 1),
        "summary": summary,
        "slowest": slowest(output),
        "log": str(log),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--load-runs", type=int, nargs="*", default=[2], help="run numbers (1-based) beside a busy core"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--logs", type=Path, default=REPO / "test-artifacts" / "soak")
    parser.add_argument("--timeout", type=float, default=90 * 60, help="per run, seconds (CI stops at 90 minutes)")
    args = parser.parse_args(argv)
    args.logs.mkdir(parents=True, exist_ok=True)
    results = []
    for number in range(1, args.runs + 1):
        loaded = number in args.load_runs
        print(f"run {number}/{args.runs}{' beside a busy core' if loaded else ''} ...", flush=True)
        result = one_run(number, loaded, args.logs, args.timeout)
        print(f"  exit {result['exit_code']} in {result['wall_s']:.0f} s: {result['summary']}", flush=True)
        results.append(result)
    report = {
        "command": "bash .ci/run on a fresh clone (dev/soak.py)",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runs": results,
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
