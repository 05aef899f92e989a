"""The foreign domain-shift generator (benchmarks/foreign_scans.py) writes what scanml reads.

The generator itself never imports scanml; this test does, to prove that its
DICOM files, manifest and COCO annotations meet scanml's data contract, and
that every box sits over material denser than what it replaced.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from scanml.data import load_dataset
from scanml.io import read_scan

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def foreign():
    spec = importlib.util.spec_from_file_location(
        "foreign_scans", ROOT / "benchmarks" / "foreign_scans.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["foreign_scans"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dataset_dir(foreign, tmp_path_factory):
    out = tmp_path_factory.mktemp("foreign")
    foreign.generate_foreign_dataset(out, n_scans=6, seed=3, workers=2)
    return out


def test_generator_does_not_use_scanml():
    source = (ROOT / "benchmarks" / "foreign_scans.py").read_text(encoding="utf-8")
    assert "import scanml" not in source and "from scanml" not in source


def test_contract_is_met(dataset_dir):
    dataset = load_dataset(dataset_dir)
    assert len(dataset) == 6
    assert {r.split for r in dataset} == {"test"}
    assert sum(r.label for r in dataset) == 3  # three scenes, each with its clean twin
    assert set(dataset.categories) == {"drugs", "weapon", "cigarettes", "other"}
    coco = json.loads((dataset_dir / "annotations.json").read_text())
    sizes = {image["file_name"]: (image["width"], image["height"]) for image in coco["images"]}
    for record in dataset:
        assert (record.label == 1) == bool(record.boxes)
        scan = read_scan(record.path)
        assert scan.attenuation.shape[0] == 1
        height, width = scan.height, scan.width
        assert 700 <= height <= 1100 and 1500 <= width <= 3000
        assert sizes[Path(record.path).relative_to(dataset_dir).as_posix()] == (width, height)
        assert all(4.0 <= s <= 6.5 for s in scan.spacing_mm)
        assert scan.meta["site"] == record.site
        # An open-beam strip at the top: low attenuation (LIN writers store air below full scale).
        top = scan.attenuation[0, :20]
        assert float(np.median(top)) < 0.5
        for box in record.boxes:
            assert box.x >= 0 and box.x + box.w <= width and box.y >= 0 and box.y + box.h <= height
            assert box.w >= 3 and box.h >= 3


def test_each_anomalous_scan_has_a_clean_twin_of_the_same_scene(dataset_dir):
    """Clean and anomalous scans share their scenes: only the threats tell them apart."""
    dataset = load_dataset(dataset_dir)
    by_id = {record.scan_id: record for record in dataset}
    anomalous = [record for record in dataset if record.label == 1]
    assert len(anomalous) == 3
    for record in anomalous:
        twin = by_id[record.extras["twin"]]
        assert twin.label == 0 and not twin.boxes and twin.extras["twin"] == record.scan_id
        assert (twin.site, twin.extras["container"], twin.extras["cargo"]) == (
            record.site,
            record.extras["container"],
            record.extras["cargo"],
        )
        scan, clean = read_scan(record.path), read_scan(twin.path)
        assert scan.spacing_mm == clean.spacing_mm
        diff = np.abs(scan.attenuation[0] - clean.attenuation[0])
        near = np.zeros(diff.shape, dtype=bool)
        for box in record.boxes:
            x, y, w, h = (int(v) for v in (box.x, box.y, box.w, box.h))
            assert float(diff[y : y + h, x : x + w].mean()) > 0.02
            near[max(y - 150, 0) : y + h + 150, max(x - 150, 0) : x + w + 150] = True
        # The same noise: far from the threats the two files agree but for
        # the scatter glow's faint reach.
        assert float(np.percentile(diff[~near], 99)) < 0.01


def test_files_follow_each_writer_convention(foreign, dataset_dir):
    seen = set()
    for path in sorted((dataset_dir / "scans").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        writer = foreign.WRITERS[ds.InstitutionName]
        seen.add(writer.site)
        assert ds.SOPClassUID in ("1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.501.2.1")
        assert ds.PixelIntensityRelationship == writer.relationship
        assert int(ds.PixelIntensityRelationshipSign) == writer.sign
        assert ds.PhotometricInterpretation == writer.photometric
        assert int(ds.BitsStored) == writer.bits_stored
        assert ds.file_meta.TransferSyntaxUID.is_compressed == writer.rle
    assert len(seen) >= 3


def test_threats_add_attenuation_over_what_they_replace(foreign, tmp_path):
    """Same vehicle, load and noise with and without the threats: each box gets denser."""
    for scene, site, n in foreign._plan(20, 11)[:2]:
        index, (pixels, cv, threats, _) = foreign.render_with_threats(11, scene, site, n)
        clean_pixels, clean_cv, _, _ = foreign.render_scan(11, index, site, n, with_threats=False)
        assert threats
        diff = np.tensordot(foreign.MU_HIGH, cv.maps - clean_cv.maps, axes=1)
        writer = foreign.WRITERS[site]
        foreign._write_dicom(tmp_path / "with.dcm", pixels, writer, cv, "w", 11, index)
        foreign._write_dicom(tmp_path / "clean.dcm", clean_pixels, writer, clean_cv, "c", 11, index)
        read_diff = (
            read_scan(tmp_path / "with.dcm").attenuation[0]
            - read_scan(tmp_path / "clean.dcm").attenuation[0]
        )
        for threat in threats:
            x, y, w, h = threat.bbox
            box = diff[y : y + h, x : x + w]
            # Tight: the object reaches every edge of its box.
            assert min(box[0].max(), box[-1].max(), box[:, 0].max(), box[:, -1].max()) > 0
            # Honest: at least ~0.05 added over the footprint (noise-free), and the
            # file read back by scanml shows it over the whole box too.
            assert threat.delta >= 0.05
            assert float(box[box > 1e-4].mean()) >= 0.05
            assert float(read_diff[y : y + h, x : x + w].mean()) > 0.02, (site, threat)


def test_deterministic_for_a_seed(foreign, tmp_path):
    a = foreign.generate_foreign_dataset(tmp_path / "a", n_scans=2, seed=5, workers=1)
    b = foreign.generate_foreign_dataset(tmp_path / "b", n_scans=2, seed=5, workers=2)

    def digest(root: Path) -> list[str]:
        files = [*sorted(root.rglob("*.dcm")), root / "manifest.csv", root / "annotations.json"]
        return [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]

    assert digest(a) == digest(b)
    with open(a / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["split"] for r in rows] == ["test", "test"]
