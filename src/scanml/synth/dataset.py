"""A simulated dataset on disk: scans, ``manifest.csv`` and COCO ``annotations.json``.

Reproducible by construction: a plan (site, label, container length, split of
every scan) is drawn from the seed, and every scan from its own child seed
(``SeedSequence(seed).spawn``), so parallel workers, a serial run and a
resumed run all write the same bytes. Sites and labels are balanced
independently (within every site exactly the requested share is anomalous),
so the site never predicts the label.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydicom.uid import generate_uid
from tqdm import tqdm

from scanml.io import Scan, write_scan
from scanml.synth.concealment import CATEGORIES, Annotation
from scanml.synth.profiles import SCANNER_PROFILES
from scanml.synth.simulate import EnergyMode, simulate_scan

__all__ = ["MANIFEST_COLUMNS", "SynthSummary", "generate_dataset"]

FileFormat = Literal["dcm", "tiff"]

MANIFEST_COLUMNS = (
    "scan_id",
    "path",
    "label",
    "site",
    "split",
    "container",
    "reefer",
    "cargo_type",
    "conveyance",
    "energy",
    "row_spacing_mm",
    "col_spacing_mm",
    "height",
    "width",
    "n_objects",
)
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
_SUFFIX = {"dcm": ".dcm", "tiff": ".tif"}
# The plan's own random stream, far from the scans' spawn keys 0..n-1.
_PLAN_KEY = 2**31 - 1
# A placement can fail (nothing fits); the scan is then redrawn from a derived seed.
_MAX_ATTEMPTS = 8
_RECORDS_DIR = ".records"
_EPOCH = datetime.datetime(2026, 1, 5, 6, 0, 0)


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`generate_dataset` wrote, and how fast."""

    out_dir: Path
    n_scans: int
    n_generated: int
    n_skipped: int
    n_anomalous: int
    n_objects: int
    megapixels: float  # pixels per channel over all scans, in millions
    seconds: float
    manifest: Path
    annotations: Path

    @property
    def scans_per_second(self) -> float:
        """Throughput of this call (skipped scans count as done)."""
        return self.n_scans / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class _Job:
    """One scan of the plan: everything a worker needs, picklable for spawned processes."""

    index: int
    seed: int
    scan_id: str
    site: str
    label: int
    length: str
    split: str
    energy: str
    out_dir: str
    path: str  # relative to out_dir
    vary_acquisition: bool = False
    threat_strength: tuple[float, float] = (1.0, 1.0)
    scene_variety: bool = False

    @property
    def fingerprint(self) -> str:
        """Identifies the scan's inputs: a resumed run reuses a file only when they match."""
        fields: tuple = (
            self.seed,
            self.index,
            self.site,
            self.label,
            self.length,
            self.energy,
            self.path,
        )
        if self.vary_acquisition:  # only then, so existing datasets keep their fingerprints
            fields += ("vary_acquisition",)
        if self.threat_strength != (1.0, 1.0):
            fields += (("threat_strength", *self.threat_strength),)
        if self.scene_variety:
            fields += ("scene_variety",)
        return hashlib.sha256(repr(fields).encode()).hexdigest()[:16]


def generate_dataset(
    out_dir: str | os.PathLike[str],
    n_scans: int,
    seed: int,
    *,
    anomaly_fraction: float = 0.5,
    sites: Sequence[str] | None = None,
    lengths: Sequence[str] = ("20ft", "40ft"),
    energy: EnergyMode = "site",
    file_format: FileFormat = "dcm",
    workers: int | None = None,
    skip_existing: bool = False,
    progress: bool = True,
    vary_acquisition: bool = False,
    threat_strength: tuple[float, float] = (1.0, 1.0),
    scene_variety: bool = False,
) -> SynthSummary:
    """Simulate ``n_scans`` scans into ``out_dir`` with a manifest and COCO annotations.

    ``sites`` defaults to every profile in :data:`SCANNER_PROFILES`;
    ``lengths`` draws among ``"20ft"`` and ``"40ft"`` (a 40 ft is high-cube
    one time in three). ``energy`` keeps each site's channels, or forces
    ``"single"`` / ``"dual"``. ``workers`` processes (default: all cores)
    make the scans; the result does not depend on it. ``skip_existing``
    keeps scans a previous run with the same inputs already finished.
    ``vary_acquisition`` draws each scan's acquisition chain around its
    site's (:func:`~scanml.synth.profiles.varied_profile`): flux, blur,
    detector streaks, pixel pitch and saturation differ from scan to scan,
    as they do between the scanners a model will meet.
    ``threat_strength`` ``(low, high)`` thins each concealment along the ray
    by a factor drawn log-uniformly in that range (never below a visible
    contrast), so that threats range from obvious to barely visible.
    ``scene_variety`` adds cargo kinds (cars) and draws each container's
    floor build, so that neither alone marks a concealment.
    """
    started = time.perf_counter()
    jobs = _plan(
        Path(out_dir), n_scans, seed, anomaly_fraction, sites, lengths, energy, file_format
    )
    low, high = (float(v) for v in threat_strength)
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(
            f"threat_strength must satisfy 0 < low <= high <= 1, got {threat_strength}"
        )
    jobs = [
        replace(
            job,
            vary_acquisition=vary_acquisition,
            threat_strength=(low, high),
            scene_variety=scene_variety,
        )
        for job in jobs
    ]
    out = Path(out_dir)
    (out / "scans").mkdir(parents=True, exist_ok=True)
    (out / _RECORDS_DIR).mkdir(exist_ok=True)
    done = {job.index: _load_record(job) for job in jobs} if skip_existing else {}
    done = {index: record for index, record in done.items() if record is not None}
    todo = [job for job in jobs if job.index not in done]
    bar = tqdm(total=len(jobs), initial=len(done), unit="scan", disable=not progress)
    with bar:
        for record in _run(todo, workers):
            done[record["index"]] = record
            bar.update()
    records = [done[job.index] for job in jobs]
    manifest = _write_manifest(out, records)
    annotations = _write_coco(out, records)
    return SynthSummary(
        out_dir=out,
        n_scans=len(jobs),
        n_generated=len(todo),
        n_skipped=len(jobs) - len(todo),
        n_anomalous=sum(r["row"]["label"] for r in records),
        n_objects=sum(len(r["annotations"]) for r in records),
        megapixels=sum(r["row"]["height"] * r["row"]["width"] for r in records) / 1e6,
        seconds=time.perf_counter() - started,
        manifest=manifest,
        annotations=annotations,
    )


def _plan(
    out_dir: Path,
    n_scans: int,
    seed: int,
    anomaly_fraction: float,
    sites: Sequence[str] | None,
    lengths: Sequence[str],
    energy: str,
    file_format: str,
) -> list[_Job]:
    """Site, label, length and split of every scan, balanced and drawn from the seed."""
    if n_scans < 0:
        raise ValueError(f"n_scans must be >= 0, got {n_scans}")
    if not 0.0 <= anomaly_fraction <= 1.0:
        raise ValueError(f"anomaly_fraction must be in [0, 1], got {anomaly_fraction}")
    sites = list(SCANNER_PROFILES) if not sites else list(sites)
    unknown = sorted(set(sites) - set(SCANNER_PROFILES))
    if unknown:
        raise ValueError(f"unknown sites {unknown}; known: {sorted(SCANNER_PROFILES)}")
    bad_lengths = sorted(set(lengths) - {"20ft", "40ft"})
    if bad_lengths or not lengths:
        raise ValueError(f"lengths must be among '20ft', '40ft', got {list(lengths)}")
    if energy not in ("site", "single", "dual"):
        raise ValueError(f"energy must be 'site', 'single' or 'dual', got {energy!r}")
    if file_format not in _SUFFIX:
        raise ValueError(f"file_format must be 'dcm' or 'tiff', got {file_format!r}")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_PLAN_KEY,)))
    site_of = [sites[i % len(sites)] for i in rng.permutation(n_scans)]
    label_of = [0] * n_scans
    split_of = ["train"] * n_scans
    for site in sites:
        members = [i for i in range(n_scans) if site_of[i] == site]
        positives = set(rng.permutation(members)[: round(anomaly_fraction * len(members))].tolist())
        for i in positives:
            label_of[i] = 1
        for label in (0, 1):
            stratum = [i for i in members if label_of[i] == label]
            for i, split in zip(
                rng.permutation(stratum).tolist(), _split_names(len(stratum)), strict=True
            ):
                split_of[i] = split
    length_of = rng.choice(list(lengths), n_scans)
    return [
        _Job(
            index=i,
            seed=seed,
            scan_id=f"scan_{i:06d}",
            site=site_of[i],
            label=label_of[i],
            length=str(length_of[i]),
            split=split_of[i],
            energy=energy,
            out_dir=str(out_dir),
            path=f"scans/scan_{i:06d}{_SUFFIX[file_format]}",
        )
        for i in range(n_scans)
    ]


def _split_names(n: int) -> list[str]:
    """Split names for a stratum of ``n`` scans in the configured proportions (train first)."""
    n_val = round(n * SPLIT_FRACTIONS["val"])
    n_test = round(n * SPLIT_FRACTIONS["test"])
    return ["test"] * n_test + ["val"] * n_val + ["train"] * (n - n_val - n_test)


def _run(jobs: list[_Job], workers: int | None) -> Iterator[dict[str, Any]]:
    """Make the scans, in worker processes unless one worker (or one job) is asked for.

    Workers are *spawned* (not forked): safe with threads in the parent and
    identical on every OS. Each job carries its own seed, so order and
    process count do not matter.
    """
    workers = workers or _available_cores()
    if workers <= 1 or len(jobs) <= 1:
        yield from map(_make_scan, jobs)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
        yield from pool.map(_make_scan, jobs, chunksize=1)


def _available_cores() -> int:
    """Cores this process may use (the affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _make_scan(job: _Job) -> dict[str, Any]:
    """Simulate, write and record one scan (runs in a worker process)."""
    for attempt in range(_MAX_ATTEMPTS):
        key = (job.index,) if attempt == 0 else (job.index, attempt)
        scan, annotations = simulate_scan(
            np.random.SeedSequence(job.seed, spawn_key=key),
            job.site,
            length=job.length,  # type: ignore[arg-type]
            anomalous=bool(job.label),
            energy=job.energy,  # type: ignore[arg-type]
            scan_id=job.scan_id,
            vary_acquisition=job.vary_acquisition,
            threat_strength=job.threat_strength,
            scene_variety=job.scene_variety,
        )
        if bool(annotations) == bool(job.label):
            break
    else:
        raise RuntimeError(
            f"{job.scan_id}: no concealment could be placed in {_MAX_ATTEMPTS} scenes"
        )
    scan.meta.update(_identity(job))
    out = Path(job.out_dir)
    write_scan(scan, out / job.path)
    record = {
        "index": job.index,
        "fingerprint": job.fingerprint,
        "row": _manifest_row(job, scan, annotations),
        "annotations": [asdict(a) for a in annotations],
    }
    _write_atomically(out / _RECORDS_DIR / f"{job.scan_id}.json", json.dumps(record, indent=1))
    return record


def _identity(job: _Job) -> dict[str, str]:
    """DICOM UIDs and acquisition time derived from the seed, so that files are reproducible."""
    entropy = [str(job.seed), job.scan_id]
    acquired = _EPOCH + datetime.timedelta(minutes=3 * job.index)
    return {
        "study_instance_uid": generate_uid(entropy_srcs=[*entropy, "study"]),
        "series_instance_uid": generate_uid(entropy_srcs=[*entropy, "series"]),
        "sop_instance_uid": generate_uid(entropy_srcs=[*entropy, "instance"]),
        "acquisition_datetime": acquired.isoformat(),
    }


def _manifest_row(job: _Job, scan: Scan, annotations: list[Annotation]) -> dict[str, Any]:
    return {
        "scan_id": job.scan_id,
        "path": job.path,
        "label": job.label,
        "site": job.site,
        "split": job.split,
        "container": scan.meta["container"],
        "reefer": int(scan.meta["reefer"]),
        "cargo_type": scan.meta["cargo_type"],
        "conveyance": scan.meta["conveyance"],
        "energy": "dual" if len(scan.channels) == 2 else "single",
        "row_spacing_mm": scan.spacing_mm[0],
        "col_spacing_mm": scan.spacing_mm[1],
        "height": scan.height,
        "width": scan.width,
        "n_objects": len(annotations),
    }


def _load_record(job: _Job) -> dict[str, Any] | None:
    """A finished scan's record when its file exists and its inputs match this run's."""
    record_path = Path(job.out_dir) / _RECORDS_DIR / f"{job.scan_id}.json"
    if not (record_path.is_file() and (Path(job.out_dir) / job.path).is_file()):
        return None
    try:
        record = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("fingerprint") == job.fingerprint else None


def _write_manifest(out: Path, records: list[dict[str, Any]]) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(record["row"] for record in records)
    path = out / "manifest.csv"
    _write_atomically(path, buffer.getvalue())
    return path


def _write_coco(out: Path, records: list[dict[str, Any]]) -> Path:
    """COCO detection format, as CVAT and Label Studio export it, plus per-object attributes."""
    category_id = {name: k + 1 for k, name in enumerate(CATEGORIES)}
    images, annotations = [], []
    for record in records:
        row = record["row"]
        image_id = record["index"] + 1
        images.append(
            {
                "id": image_id,
                "file_name": row["path"],
                "width": row["width"],
                "height": row["height"],
                "scan_id": row["scan_id"],
                "site": row["site"],
            }
        )
        for annotation in record["annotations"]:
            x, y, w, h = annotation["bbox"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id[annotation["category"]],
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "attributes": {
                        "concealment": annotation["concealment"],
                        "material": annotation["material"],
                        "mass_kg": annotation["mass_kg"],
                        "contrast": annotation["contrast"],
                    },
                }
            )
    coco = {
        "info": {"description": "scanml simulated container scans", "version": "1"},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": k, "name": name, "supercategory": "anomaly"} for name, k in category_id.items()
        ],
    }
    path = out / "annotations.json"
    _write_atomically(path, json.dumps(coco, indent=1))
    return path


def _write_atomically(path: Path, text: str) -> None:
    """Write beside the target and rename: a killed run never leaves half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)
