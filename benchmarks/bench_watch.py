"""``scanml watch`` under a scanner lane's load: latency from arrival to report, and throughput.

Runs the real service (``scanml watch`` in its own process) over a folder
and, when Orthanc is installed, over a DICOMweb store (a private Orthanc
with its DICOMweb plugin, reports stored back with STOW-RS), and measures
from outside:

- latency from arrival (the file renamed into the folder, or the STOW-RS
  call returned) to the report being there (the TDR file in the folder, or
  the TDR listed by the store's QIDO-RS), p50 and p95, with scans arriving
  at a steady 1 scan/s;
- sustained throughput: a burst of scans dropped at once, scans/s until
  the last report, compared with a scanner lane's 20-200 trucks an hour;
- where the service's time goes (its status endpoint: fetch, decode,
  model, write, store) during the burst.

Without ``--model`` a randomly initialised network of ``configs/default.yaml``'s
architecture and resolution is used: its scores mean nothing, its cost is
that of a trained one. Scans are simulated (``scanml.synth``, 20 ft and
40 ft containers of two sites). Results go to ``reports/bench_watch.md``
and ``.json``. Run: ``.venv/bin/python benchmarks/bench_watch.py``
(``--quick`` for a smoke check).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the Orthanc launcher the tests use

from orthanc_server import OrthancServer, free_port, missing_reason  # noqa: E402

TRUCKS_PER_HOUR = (20, 200)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model URI or folder (default: random)")
    parser.add_argument("--sources", default="folder,dicomweb", help="folder, dicomweb or both")
    parser.add_argument("--steady", type=int, default=30, help="scans at the steady rate")
    parser.add_argument("--rate", type=float, default=1.0, help="steady arrivals per second")
    parser.add_argument("--burst", type=int, default=30, help="scans dropped at once")
    parser.add_argument("--poll", type=float, default=0.5, help="the service's --poll")
    parser.add_argument("--out", type=Path, default=REPO / "reports")
    parser.add_argument("--quick", action="store_true", help="6 steady + 6 burst scans")
    args = parser.parse_args()
    if args.quick:
        args.steady, args.burst = 6, 6

    workdir = Path(tempfile.mkdtemp(prefix="bench-watch-"))
    try:
        model = args.model or str(_random_bundle(workdir / "model"))
        scans = _simulated_scans(workdir / "data", args.steady + args.burst + 1)
        results = {}
        for source in args.sources.split(","):
            if source == "dicomweb" and missing_reason():
                print(f"skipping dicomweb: {missing_reason()}", file=sys.stderr)
                continue
            results[source] = _run(source, model, scans, workdir / source, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    _report(results, args)


def _run(source: str, model: str, scans: list[Path], workdir: Path, args) -> dict:
    workdir.mkdir(parents=True)
    port = free_port()
    out = workdir / "scores.parquet"
    orthanc = None
    if source == "dicomweb":
        orthanc = OrthancServer(workdir / "orthanc").start()
        lane = _StoreLane(orthanc)
        target = ["--input", orthanc.url, "--tdr-to", orthanc.url]
    else:
        lane = _FolderLane(workdir / "inbox", workdir / "tdr")
        target = ["--input", str(lane.inbox), "--tdr", str(lane.reports)]
    command = [sys.executable, "-m", "scanml", "watch", "--model", model, "--out", str(out)]
    command += [*target, "--poll", str(args.poll), "--settle", "0", "--status-port", str(port)]
    command += ["--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    log = (workdir / "watch.log").open("w")
    service = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        started = time.monotonic()
        _until(lambda: _status(port) is not None, service)
        warm = [scans[0]]  # the first forward pass pays for allocations: not measured
        lane.deliver(warm)
        _until(lambda: lane.done(warm), service)
        ready_s = time.monotonic() - started

        steady = scans[1 : 1 + args.steady]
        arrivals = {}
        for index, scan in enumerate(steady):
            time.sleep(max(0.0, started + ready_s + index / args.rate - time.monotonic()))
            arrivals.update(lane.deliver([scan]))
        _until(lambda: lane.done(steady), service)
        latencies = [lane.finished[s.name] - arrivals[s.name] for s in steady]

        burst = scans[1 + args.steady :]
        before = _status(port)
        burst_started = time.monotonic()
        lane.deliver(burst)
        _until(lambda: lane.done(burst), service)
        burst_s = max(lane.finished[s.name] for s in burst) - burst_started
        after = _status(port)
        service.send_signal(signal.SIGTERM)
        exit_code = service.wait(timeout=120)
    finally:
        if service.poll() is None:
            service.kill()
        lane.close()
        if orthanc is not None:
            orthanc.stop()
        log.close()
    spent = {k: after["timings_s"][k] - before["timings_s"][k] for k in after["timings_s"]}
    return {
        "source": source,
        "service_ready_s": round(ready_s, 2),
        "steady_scans": len(steady),
        "rate_per_s": args.rate,
        "latency_p50_s": float(np.percentile(latencies, 50)),
        "latency_p95_s": float(np.percentile(latencies, 95)),
        "latency_max_s": float(np.max(latencies)),
        "burst_scans": len(burst),
        "burst_seconds": burst_s,
        "sustained_scans_per_s": len(burst) / burst_s,
        "time_share": {k: v / burst_s for k, v in spent.items()}
        | {"other": 1 - sum(spent.values()) / burst_s},
        "service_latency_p50_s": after["latency_p50_s"],
        "service_latency_p95_s": after["latency_p95_s"],
        "exit_code_after_sigterm": exit_code,
    }


class _FolderLane:
    """Scans renamed into a folder; done when their report file is there."""

    def __init__(self, inbox: Path, reports: Path) -> None:
        self.inbox, self.reports = inbox, reports
        inbox.mkdir(parents=True)
        self.finished: dict[str, float] = {}
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def deliver(self, scans: list[Path]) -> dict[str, float]:
        arrived = {}
        for scan in scans:
            partial = self.inbox / f".{scan.name}.partial"
            shutil.copyfile(scan, partial)
            os.replace(partial, self.inbox / scan.name)
            arrived[scan.name] = time.monotonic()
        return arrived

    def done(self, scans: list[Path]) -> bool:
        return all(scan.name in self.finished for scan in scans)

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            if self.reports.is_dir():
                now = time.monotonic()
                for report in self.reports.glob("*.dcm"):
                    self.finished.setdefault(f"{report.stem}.dcm", now)

    def close(self) -> None:
        self._stop.set()


class _StoreLane:
    """Scans STOWed to the store; done when a report about them is listed by QIDO-RS."""

    def __init__(self, orthanc: OrthancServer) -> None:
        from dicomweb_client import DICOMwebClient

        self.client = DICOMwebClient(f"{orthanc.http}/dicom-web")
        self.names: dict[str, str] = {}  # SOP Instance UID -> file name
        self.finished: dict[str, float] = {}
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def deliver(self, scans: list[Path]) -> dict[str, float]:
        arrived = {}
        for scan in scans:
            dataset = pydicom.dcmread(scan)
            self.names[str(dataset.SOPInstanceUID)] = scan.name
            self.client.store_instances([dataset])
            arrived[scan.name] = time.monotonic()
        return arrived

    def done(self, scans: list[Path]) -> bool:
        return all(scan.name in self.finished for scan in scans)

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            try:
                reports = self.client.search_for_instances(
                    search_filters={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.501.3"}
                )
            except Exception:
                continue
            now = time.monotonic()
            for item in reports:
                uid = item["00080018"]["Value"][0]
                if uid in self._seen:
                    continue
                self._seen.add(uid)
                metadata = self.client.retrieve_instance_metadata(
                    item["0020000D"]["Value"][0], item["0020000E"]["Value"][0], uid
                )
                # Referenced Study Sequence (scanml's TDRs), else Referenced SOP Sequence.
                sequence = metadata.get("00081110") or metadata["00081199"]
                about = sequence["Value"][0]["00081155"]["Value"][0]
                self.finished.setdefault(self.names.get(about, about), now)

    def close(self) -> None:
        self._stop.set()


def _random_bundle(folder: Path) -> Path:
    """configs/default.yaml's network, randomly initialised: real cost, meaningless scores."""
    from scanml.models import ModelBundle, create_model
    from scanml.preprocess import Preprocessing

    config = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())["model"]
    classes = ["drugs", "cigarettes", "weapon", "other"]
    network = create_model(
        config["architecture"],
        len(config["channels"]),
        num_categories=len(classes),
        output_stride=int(config["output_stride"]),
    )
    preprocessing = Preprocessing(tuple(config["channels"]), float(config["spacing_mm"]))
    bundle = ModelBundle(network, config["architecture"], preprocessing, classes, threshold=0.5)
    return bundle.save(folder)


def _simulated_scans(folder: Path, count: int) -> list[Path]:
    from scanml.synth import generate_dataset

    generate_dataset(
        out_dir=folder,
        n_scans=count,
        seed=0,
        sites=["antwerp", "rotterdam"],
        anomaly_fraction=0.5,
        # One file per scan, as the single-energy default model reads them: a
        # dual-energy scan is two files (x.dcm, x.low.dcm) and one report.
        energy="single",
        workers=1,
        progress=False,
    )
    return sorted((folder / "scans").glob("*.dcm"))


def _status(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as answer:
            return json.load(answer)
    except OSError:
        return None


def _until(condition, service: subprocess.Popen, timeout_s: float = 1800.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if service.poll() is not None:
            raise RuntimeError(f"scanml watch exited with {service.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"scanml watch: nothing after {timeout_s:.0f} s")
        time.sleep(0.05)


def _report(results: dict, args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    machine = {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "load_average_at_end": os.getloadavg(),
        "model": args.model or "configs/default.yaml network, random weights",
        "service_flags": f"--poll {args.poll} --settle 0 --device cpu --workers 0",
    }
    (args.out / "bench_watch.json").write_text(
        json.dumps({"machine": machine, "results": results}, indent=2) + "\n"
    )
    lanes = [f"{t} trucks/h = {t / 3600:.3f} scans/s" for t in TRUCKS_PER_HOUR]
    lines = [
        "# scanml watch: latency and throughput",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_watch.py{' --quick' if args.quick else ''}`"
        f" ({machine['cpus']} CPUs, load average at the end"
        f" {', '.join(f'{x:.1f}' for x in machine['load_average_at_end'])};"
        f" model: {machine['model']}; service: {machine['service_flags']}).",
        f"A scanner lane: {'; '.join(lanes)}.",
        "",
        "| source | steady rate | latency p50 | p95 | max | sustained scans/s | lanes at 200 trucks/h"
        " | fetch | decode | model | write | store | other |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results.values():
        share = r["time_share"]
        lines.append(
            f"| {r['source']} | {r['rate_per_s']:.1f}/s x {r['steady_scans']}"
            f" | {r['latency_p50_s']:.2f} s | {r['latency_p95_s']:.2f} s | {r['latency_max_s']:.2f} s"
            f" | {r['sustained_scans_per_s']:.2f} | {r['sustained_scans_per_s'] * 3600 / 200:.0f}"
            + "".join(
                f" | {100 * share[k]:.0f} %"
                for k in ("fetch", "decode", "model", "write", "store", "other")
            )
            + " |"
        )
    lines += [
        "",
        "Latency: arrival (file renamed into the folder / STOW-RS returned) to the report"
        " (TDR file written / TDR listed by QIDO-RS), measured outside the service."
        " Sustained: a burst of scans dropped at once, until the last report. Shares: of"
        " the burst's wall time, from the service's status endpoint; 'other' is the table"
        " commit per scan, polling and listing.",
    ]
    (args.out / "bench_watch.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
