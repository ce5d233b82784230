"""Time reading an hour landed as many small files against the same windows in three files, on a real Azurite.

Stream Analytics can write one small file per flush; an hour of 84 sensors x 60 windows = 5,040 windows is landed
twice, in two containers: as 5,040 one-window JSON-lines files, and as 3 files (as ``LandingPlan`` does). Each
repeat times, for both landings and interleaved so that machine noise hits them alike:

- ``read``: ``windows.read_owned`` (list the folders, download every blob, parse, keep the owned windows);
- ``load``: ``steps.load.read_range`` (what the hour's read and score tasks do before scoring, one after the other in
  one process: read, route, validate with great-expectations, features);

with the reader's downloads concurrent (``formats.DOWNLOAD_CONCURRENCY``, the default 8) and, for ``read``, one at
a time. Beside them, on the 5,040 files and in the same process, the floors and the old path:

- ``list``: the folder's listing alone (``Storage.list``), and ``raw list``: its List Blobs pages by a bare
  ``http.client`` loop;
- ``raw get c8`` / ``raw get c1``: one bare ``http.client`` GET per blob (keep-alive, SAS, no SDK), 8 threads or
  one: what Azurite and the loopback cost with no client work; Azurite's own CPU seconds per GET are recorded;
- ``sdk downloader c8``: the SDK's ``download_blob`` per blob client, 8 threads: the reader's path before
  ``Storage.read_many``.

Reported: the median over ``--repeats``, the load average before each repeat, and the ratios. Landing is done by
8 threads; ``--azurite-dir`` keeps Azurite's data in a folder so that a second run reuses the landing.

    PYTHONPATH=. .venv/bin/python bench/bench_many_files.py [--sensors 84] [--repeats 5] [--azurite-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote, urlsplit

from bench_scoring import machine

from dev.azurite import Azurite
from sensor_scoring import settings as config
from sensor_scoring.runs.scope import Scope
from sensor_scoring.steps.load import read_range
from sensor_scoring.storage import BlobStorage, make_sas_setting, sas_container_urls
from sensor_scoring.tools.simulate import SimulationConfig, simulate_hour
from sensor_scoring.windows import LandingPlan, aggregate_readings, formats, land_windows, read_owned, to_asa_json_lines

HERE = Path(__file__).resolve().parent
HOUR = datetime(2026, 1, 5, 3, tzinfo=timezone.utc)


def containers(prefix: str) -> config.Containers:
    names = {name: f"{name}-{prefix}" for name in config.Containers().__dict__}
    return config.Containers(**names)


FOLDER = f"{HOUR:%Y/%m/%d/%H}/"


def land_one_file_per_window(storage: BlobStorage, container: str, windows) -> int:  # type: ignore[no-untyped-def]
    """One blob per window, 8 writes in flight; skipped when the container already holds them (--azurite-dir)."""
    rows = windows.reset_index(drop=True)
    if len(storage.list(container, FOLDER)) == len(rows):
        return len(rows)

    def put(number: int) -> None:
        storage.write_bytes(container, f"{FOLDER}0_{number:05d}_1.json", to_asa_json_lines(rows.iloc[[number]]))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, range(len(rows))))
    return len(rows)


def azurite_cpu_s(pid: int) -> float:
    """User + system CPU seconds of the Azurite process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raw_gets(sas_url: str, names: list[str], concurrency: int) -> int:
    """One bare GET per blob, keep-alive, ``concurrency`` connections: the floor under any client."""
    url = urlsplit(sas_url)

    def fetch(part: list[str]) -> int:
        connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60)
        total = 0
        try:
            for name in part:
                connection.request("GET", f"{url.path}/{quote(name)}?{url.query}", headers={"x-ms-version": VERSION})
                response = connection.getresponse()
                body = response.read()
                if response.status != 200:
                    raise RuntimeError(f"raw GET of {name}: {response.status} {body[:200]!r}")
                total += len(body)
        finally:
            connection.close()
        return total

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return sum(pool.map(fetch, [names[start::concurrency] for start in range(concurrency)]))


def raw_list(sas_url: str) -> int:
    """The folder's List Blobs pages by a bare loop, names and sizes parsed with ElementTree."""
    import xml.etree.ElementTree as ET

    url = urlsplit(sas_url)
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60)
    marker, count = "", 0
    try:
        while True:
            query = f"restype=container&comp=list&prefix={quote(FOLDER)}&marker={quote(marker)}&{url.query}"
            connection.request("GET", f"{url.path}?{query}", headers={"x-ms-version": VERSION})
            root = ET.fromstring(connection.getresponse().read())
            for blob in root.iter("Blob"):
                blob.findtext("Name"), blob.findtext("Properties/Content-Length")
                count += 1
            marker = root.findtext("NextMarker") or ""
            if not marker:
                return count
    finally:
        connection.close()


def sdk_downloader(storage: BlobStorage, container: str, names: list[str], concurrency: int) -> None:
    """The reader's path before ``Storage.read_many``: a blob client and the SDK's downloader per blob."""

    def fetch(name: str) -> bytes:
        data: bytes = storage._client.get_blob_client(container, name).download_blob(max_concurrency=2).readall()
        return data

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(fetch, names))


#: The service version the bare requests ask for (any version Azurite knows).
VERSION = "2021-08-06"


@contextlib.contextmanager
def azurite_at(location: str | None) -> Iterator[Azurite]:
    """Azurite on a temporary folder, or on ``location`` kept after the run (its landing reused next time)."""
    if location:
        with Azurite(Path(location)) as azurite:
            yield azurite
        return
    with tempfile.TemporaryDirectory() as tmp, Azurite(Path(tmp) / "azurite") as azurite:
        yield azurite


def timed(call: Callable[[], object]) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensors", type=int, default=84)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(HERE / "results" / "many_files.json"))
    parser.add_argument("--azurite-dir", default=None, help="keep Azurite's data here and reuse its landing")
    args = parser.parse_args()

    devices = -(-args.sensors // 4)
    readings, _ = simulate_hour(SimulationConfig(devices=devices, tags=4, seed=5), HOUR)
    windows = aggregate_readings(readings)
    windows = windows[windows["window_end"] < HOUR + timedelta(hours=1)].reset_index(drop=True)
    c8 = formats.DOWNLOAD_CONCURRENCY_DEFAULT
    results: dict[str, list[float]] = {}
    loads: list[float] = []

    cpu_s: dict[str, list[tuple[float, float]]] = {}
    pid = 0

    def record(key: str, call: Callable[[], object]) -> None:
        """Wall seconds, and CPU seconds of this process and of Azurite: on a shared machine the CPU is what a
        step costs whatever the others run meanwhile."""
        python, server = time.process_time(), azurite_cpu_s(pid)
        results.setdefault(key, []).append(timed(call))
        cpu_s.setdefault(key, []).append((time.process_time() - python, azurite_cpu_s(pid) - server))

    with azurite_at(args.azurite_dir) as azurite:
        assert azurite.proc is not None
        pid = azurite.proc.pid
        os.environ[config.STORAGE_ENV] = azurite.connection_string
        storage = BlobStorage(azurite.connection_string)
        many, three = containers("many"), containers("three")
        began = time.perf_counter()
        files = land_one_file_per_window(storage, many.windows, windows)
        land_windows(storage, three.windows, windows, LandingPlan(files_per_hour=3, late_share=0.0))
        landing_s = time.perf_counter() - began
        sas_url = sas_container_urls(
            make_sas_setting(azurite.connection_string, read=[many.windows], read_write=[], hours=2)
        )[many.windows]
        names = [info.name for info in storage.list(many.windows, FOLDER)]
        runs = {"many": many, "three": three}
        for repeat in range(args.repeats):
            loads.append(os.getloadavg()[0])
            for concurrency in (c8, 1):
                formats.DOWNLOAD_CONCURRENCY = concurrency
                for label, cont in runs.items():
                    record(
                        f"read {label} c{concurrency}",
                        lambda c=cont: read_owned(storage, c.windows, HOUR, HOUR + timedelta(hours=1), 1),
                    )
                    if concurrency == c8:
                        hour = Scope(storage, cont, f"bench-{repeat}", HOUR, HOUR + timedelta(hours=1))
                        record(f"load {label} c{c8}", lambda h=hour: read_range(h))
            formats.DOWNLOAD_CONCURRENCY = c8
            record("list many", lambda: storage.list(many.windows, FOLDER))
            record("raw list many", lambda: raw_list(sas_url))
            for concurrency in (c8, 1):
                record(f"raw get many c{concurrency}", lambda n=concurrency: raw_gets(sas_url, names, n))
            record(f"sdk downloader many c{c8}", lambda: sdk_downloader(storage, many.windows, names, c8))
        formats.DOWNLOAD_CONCURRENCY = c8
    medians = {key: statistics.median(values) for key, values in results.items()}
    ratios = {
        f"{step} many ÷ three (c{conc})": medians[f"{step} many c{conc}"] / medians[f"{step} three c{conc}"]
        for step, conc in (("read", c8), ("read", 1), ("load", c8))
    } | {
        f"read many c{c8} ÷ many c1": medians[f"read many c{c8}"] / medians["read many c1"],
        f"read many c{c8} ÷ raw get c{c8}": medians[f"read many c{c8}"] / medians[f"raw get many c{c8}"],
        f"sdk downloader c{c8} ÷ raw get c{c8}": medians[f"sdk downloader many c{c8}"] / medians[f"raw get many c{c8}"],
        "list many ÷ raw list": medians["list many"] / medians["raw list many"],
        f"floor: (raw list + raw get c{c8}) ÷ load three c{c8}": (
            (medians["raw list many"] + medians[f"raw get many c{c8}"]) / medians[f"load three c{c8}"]
        ),
    }
    report = {
        "benchmark": "many_files",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "windows": len(windows),
        "files": {"many": files, "three": 3},
        "repeats": args.repeats,
        "load_average_1min_before_each_repeat": [round(x, 2) for x in loads],
        "landing_s": round(landing_s, 1),
        "median_s": {k: round(v, 3) for k, v in medians.items()},
        "ratios": {k: round(v, 2) for k, v in ratios.items()},
        "median_cpu_ms_per_file_of_the_5040": {
            key: {
                "python": round(statistics.median(p for p, _ in pairs) / files * 1000, 2),
                "azurite": round(statistics.median(a for _, a in pairs) / files * 1000, 2),
            }
            for key, pairs in cpu_s.items()
            if "many" in key
        },
        "median_cpu_s": {
            key: {
                "python": round(statistics.median(p for p, _ in pairs), 3),
                "azurite": round(statistics.median(a for _, a in pairs), 3),
            }
            for key, pairs in cpu_s.items()
        },
        "all_s": {k: [round(x, 3) for x in v] for k, v in results.items()},
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("median_s", "ratios", "median_cpu_ms_per_file_of_the_5040")}, indent=2))


if __name__ == "__main__":
    main()
