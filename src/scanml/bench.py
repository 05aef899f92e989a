"""Speed benchmarks behind ``make bench``: a Markdown table under ``reports/``, logged to MLflow.

Targets live here, never in timed tests. Each figure is measured on the
machine that runs it; the machine's own matmul FLOP/s is measured too, so
figures can be read as shares of what the hardware can do and compared
across machines as ratios.

Sections:
1. the machine: matmul FLOP/s (float32, all threads);
2. the loader against the model: tiles/s that the loader delivers against
   tiles/s that a training step consumes (the loader must not starve it),
   and training throughput as a share of matmul FLOP/s;
3. whole-scan inference against sliding windows at the same output stride;
4. end-to-end ``scanml score`` on a folder of scans, split into decoding,
   model and writing;
5. the simulator and ``read_scan``;
6. (full mode only) time to a validation scan AUROC of 0.95 with the
   default configuration on 300 scans from two sites.
"""

from __future__ import annotations

import json
import logging
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from scanml.device import autocast_dtype, precision_name, resolve_device

__all__ = [
    "BenchmarkReport",
    "loader_benchmark",
    "matmul_flops",
    "run_benchmarks",
    "training_throughput",
]

log = logging.getLogger(__name__)


@dataclass
class BenchmarkReport:
    """Rows of (section, measurement, value, unit, note), rendered as Markdown."""

    rows: list[tuple[str, str, float, str, str]] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)

    def add(self, section: str, what: str, value: float, unit: str, note: str = "") -> None:
        self.rows.append((section, what, float(value), unit, note))
        log.info("%s | %s: %.4g %s %s", section, what, value, unit, note)

    def to_markdown(self) -> str:
        lines = [
            "# scanml benchmarks",
            "",
            f"Measured {self.context.get('date')} on {self.context.get('machine')} "
            f"({self.context.get('threads')} threads, torch {torch.__version__}, device {self.context.get('device')}).",
            f"Command: `{self.context.get('command')}`.",
            "",
            "| section | measurement | value | unit | note |",
            "|---|---|---:|---|---|",
        ]
        lines += [f"| {s} | {w} | {v:.4g} | {u} | {n} |" for s, w, v, u, n in self.rows]
        return "\n".join(lines) + "\n"

    def metrics(self) -> dict[str, float]:
        return {_metric_key(section, what): value for section, what, value, _, _ in self.rows}


def run_benchmarks(
    out_dir: str | Path = "reports",
    *,
    quick: bool = False,
    training: bool = True,
    device: str = "auto",
) -> Path:
    """Run every section, write ``<out_dir>/benchmark.md`` (+ ``.json``) and log it to MLflow.

    ``quick`` shrinks every section (a smoke check); ``training=False`` skips
    the time-to-AUROC section, which trains the default preset (~25 min on 2 cores).
    """
    from scanml.tracking import Tracker, resolve_tracking_uri, run_tags

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    resolved = resolve_device(device)
    report = BenchmarkReport(
        context={
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
            "threads": torch.get_num_threads(),
            "device": str(resolved),
            "command": f"scanml bench{' --quick' if quick else ''}{'' if training else ' --skip-training'}",
        }
    )
    peak = matmul_flops(resolved)
    report.add("machine", "matmul float32", peak / 1e9, "GFLOP/s", "4096 x 4096, best of 5")

    with tempfile.TemporaryDirectory(prefix="scanml-bench-") as tmp:
        _sections(report, Path(tmp), peak=peak, quick=quick, training=training, device=resolved)

    path = out_dir / "benchmark.md"
    path.write_text(report.to_markdown())
    (out_dir / "benchmark.json").write_text(
        json.dumps({"context": report.context, "rows": report.rows}, indent=2)
    )
    tracker = Tracker(resolve_tracking_uri(), "scanml-bench")
    if tracker.start(run_name=f"bench{'-quick' if quick else ''}", tags=run_tags()):
        tracker.log_metrics(report.metrics(), step=0)
        tracker.log_artifact(path)
        tracker.end()
    return path


def _sections(
    report: BenchmarkReport,
    tmp: Path,
    *,
    peak: float,
    quick: bool,
    training: bool,
    device: torch.device,
) -> None:
    from scanml.synth import generate_dataset

    n_scans = 12 if quick else 100
    data_dir = tmp / "data"
    started = time.perf_counter()
    generate_dataset(
        out_dir=data_dir, n_scans=n_scans, seed=0, sites=["antwerp", "rotterdam"], progress=False
    )
    seconds = time.perf_counter() - started
    report.add(
        "simulator",
        f"generate_dataset, {n_scans} scans, all cores",
        n_scans / seconds,
        "scans/s",
        f"1,000 scans ≈ {1000 * seconds / n_scans / 60:.1f} min",
    )

    _read_scan_section(report, data_dir)
    _loader_and_training_section(report, data_dir, peak=peak, quick=quick, device=device)
    _inference_section(report, peak=peak, quick=quick, device=device)
    _scoring_section(report, data_dir, tmp, quick=quick, device=device)
    if training and not quick:
        _time_to_auroc_section(report, tmp)


def matmul_flops(device: torch.device | str = "cpu", size: int = 4096, repeats: int = 5) -> float:
    """The machine's measured float32 matmul FLOP/s: the ceiling the model's FLOP/s is compared with."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.matmul(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        torch.matmul(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def training_throughput(
    architecture: str = "resnet18",
    *,
    tile_size: int = 128,
    batch_size: int = 32,
    in_channels: int = 1,
    steps: int = 5,
    device: torch.device | str = "cpu",
    output_stride: int = 32,
    stages: int | None = None,
    input_contrast: int | Sequence[int] | None = None,
    precision: torch.dtype | None = None,
) -> tuple[float, float]:
    """(tiles/s, FLOP/s) of full training steps (forward, backward, AdamW) on random tiles.

    ``precision`` is the autocast dtype the step runs under (None: float32),
    as :func:`scanml.device.autocast_dtype` resolves ``train.amp``; float16 runs
    without the gradient scaler training uses (throughput only).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from scanml.losses import DenseTileLoss
    from scanml.models import create_model

    device = torch.device(device)
    network = create_model(
        architecture,
        in_channels=in_channels,
        num_categories=4,
        output_stride=output_stride,
        stages=stages,
        input_contrast=input_contrast,
    ).to(device)
    network = network.to(memory_format=torch.channels_last)
    criterion = DenseTileLoss(grid=network.grid)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    images = torch.rand(batch_size, in_channels, tile_size, tile_size, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    targets = {
        "label": (torch.arange(batch_size, device=device) % 2).float(),
        "mask": torch.zeros(batch_size, tile_size, tile_size, device=device),
        "category": torch.full((batch_size,), -1, device=device),
    }

    def step() -> None:
        with torch.autocast(device.type, dtype=precision, enabled=precision is not None):
            logits = network(images)
        losses = criterion(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step()
    flops_per_step = counter.get_total_flops()
    seconds = _best_time(step, steps, device)
    return batch_size / seconds, flops_per_step / seconds


def loader_benchmark(
    data_dir: str | Path,
    *,
    channels: tuple[str, ...] = ("high",),
    spacing_mm: float = 8.0,
    tile_size: int = 128,
    tiles_per_scan: int = 64,
    batch_size: int = 64,
    workers: Sequence[int] = (0, 1, 2),
    augment: Sequence[bool] = (False, True),
    epochs: int = 3,
) -> list[dict]:
    """One row per (augment, workers): tiles, first-epoch and cached-epoch tiles/s.

    ``tiles_per_s`` is measured over epochs 2.., when every scan comes from
    a worker's cache (persistent workers): what the model sees in a long
    run. ``cold_tiles_per_s`` includes worker start-up and decoding.
    """
    if epochs < 2:
        raise ValueError("need at least two epochs: one to fill the caches, one to measure")
    from torch.utils.data import DataLoader

    from scanml.dataset import load_dataset
    from scanml.preprocess import Preprocessing
    from scanml.threat_projection import ThreatProjector
    from scanml.tiles import TileDataset, TileSampler
    from scanml.transforms import TrainTransform

    dataset = load_dataset(data_dir)
    preprocessing = Preprocessing(channels=channels, spacing_mm=spacing_mm)
    rows = []
    for augmented in augment:
        transform = (
            TrainTransform(tip=ThreatProjector.from_dataset(dataset, preprocessing, n_generated=16))
            if augmented
            else None
        )
        for n_workers in workers:
            sampler = TileSampler(tile_size=tile_size, tiles_per_scan=tiles_per_scan)
            tiles = TileDataset(dataset, preprocessing, sampler, transform=transform)
            loader = DataLoader(
                tiles,
                batch_size=batch_size,
                num_workers=n_workers,
                persistent_workers=n_workers > 0,
                collate_fn=tiles.collate,
            )
            counts, seconds = [], []
            for epoch in range(epochs):
                tiles.set_epoch(epoch)
                started = time.perf_counter()
                counts.append(sum(len(batch["label"]) for batch in loader))
                seconds.append(time.perf_counter() - started)
            rows.append(
                {
                    "workers": n_workers,
                    "augment": augmented,
                    "tiles": counts[0],
                    "cold_tiles_per_s": counts[0] / seconds[0],
                    "tiles_per_s": sum(counts[1:]) / sum(seconds[1:]),
                    "reads": tiles.stats.totals()["reads"],
                }
            )
            del loader  # stops its workers before the next case starts its own
    return rows


def _read_scan_section(report: BenchmarkReport, data_dir: Path) -> None:
    from pydicom.uid import RLELossless

    from scanml.io import read_scan, write_scan

    first = sorted(data_dir.rglob("*.dcm"))[0]
    scan = read_scan(first)
    megapixels = scan.attenuation.shape[1] * scan.attenuation.shape[2] / 1e6
    for name, kwargs in (("uncompressed", {}), ("RLE", {"transfer_syntax": RLELossless})):
        path = data_dir / f"bench-{name}.dcm"
        write_scan(scan, path, **kwargs)
        seconds = _best_time(lambda p=path: read_scan(p), 5, torch.device("cpu"))
        report.add(
            "read_scan",
            f"DICOS DX {name}, {megapixels:.1f} MP",
            1000 * seconds / megapixels,
            "ms/MP",
        )
        path.unlink()


def _loader_and_training_section(
    report: BenchmarkReport, data_dir: Path, *, peak: float, quick: bool, device: torch.device
) -> None:
    from scanml.config import load_config

    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "default.yaml")
    for row in loader_benchmark(
        data_dir,
        spacing_mm=config.model.spacing_mm,
        tile_size=config.data.tile_size,
        workers=(config.data.num_workers,),
        augment=(True,),
    ):
        report.add(
            "loader vs model",
            f"loader, {row['workers']} workers, augmented",
            row["tiles_per_s"],
            "tiles/s",
        )
    # the default preset's network, in float32 and in the precision train.amp gives here
    precisions = dict.fromkeys([None, autocast_dtype(device, config.train.amp)])
    for precision in precisions:
        tiles_per_s, flops = training_throughput(
            config.model.architecture,
            tile_size=config.data.tile_size,
            batch_size=config.train.batch_size,
            steps=2 if quick else 5,
            device=device,
            in_channels=len(config.model.channels),
            output_stride=config.model.output_stride,
            stages=config.model.stages,
            input_contrast=config.model.input_contrast,
            precision=precision,
        )
        if precision is None:
            float32_flops = flops
        name = precision_name(precision)
        report.add(
            "loader vs model",
            f"training step, {config.model.architecture}, {name}",
            tiles_per_s,
            "tiles/s",
            "the default preset's network: forward + backward + AdamW",
        )
    report.add(
        "loader vs model",
        "training FLOP/s share of matmul (float32)",
        100 * float32_flops / peak,
        "%",
        f"{float32_flops / 1e9:.1f} GFLOP/s",
    )


def _inference_section(
    report: BenchmarkReport, *, peak: float, quick: bool, device: torch.device
) -> None:
    from scanml.bench_inference import inference_benchmark

    for row in inference_benchmark("resnet18", device=device, quick=quick):
        label = row["scan"]
        report.add(
            "inference",
            f"whole scan, {label}",
            row["whole_scans_per_s"],
            "scans/s",
            f"{row['whole_megapixels_per_s']:.2f} MP/s at 8 mm, output stride 32",
        )
        report.add(
            "inference",
            f"sliding window, {label}",
            row["window_scans_per_s"],
            "scans/s",
            "same output stride",
        )
        report.add(
            "inference", f"speed-up whole/sliding, {label}", row["speedup"], "x", "target ≥ 3x"
        )
        report.add(
            "inference",
            f"FLOP/s share of matmul, {label}",
            100 * row["flops_per_s"] / peak,
            "%",
            "target ≥ 60 %",
        )


def _scoring_section(
    report: BenchmarkReport, data_dir: Path, tmp: Path, *, quick: bool, device: torch.device
) -> None:
    from scanml.models import ModelBundle, create_model
    from scanml.preprocess import Preprocessing
    from scanml.scoring import score

    bundle = ModelBundle(
        network=create_model("resnet18", in_channels=1, num_categories=4, output_stride=16),
        architecture="resnet18",
        preprocessing=Preprocessing(channels=("high",), spacing_mm=8.0),
        class_names=["drugs", "weapon", "cigarettes", "other"],
        threshold=0.5,
        region_threshold=0.5,
        metadata={"output_stride": 16},
    )
    bundle.save(tmp / "model")
    summary = score(
        str(tmp / "model"),
        str(data_dir),
        tmp / "scores.parquet",
        tdr=tmp / "tdr",
        device=str(device),
        progress=False,
    )
    n = summary.scanned + summary.failed
    report.add(
        "scanml score",
        f"end to end, {n} scans, resnet18",
        n / summary.seconds,
        "scans/s",
        f"{summary.seconds:.1f} s in all",
    )
    for part in ("decode", "model", "write"):
        seconds = summary.timings.get(part, float("nan"))
        report.add(
            "scanml score",
            f"time in {part}",
            100 * seconds / summary.seconds,
            "% of wall",
            "decoding runs in worker processes, overlapped" if part == "decode" else "",
        )


def _time_to_auroc_section(report: BenchmarkReport, tmp: Path) -> None:
    import mlflow

    from scanml.config import load_config
    from scanml.synth import generate_dataset
    from scanml.train import train

    data_dir = tmp / "auroc-data"
    generate_dataset(
        out_dir=data_dir, n_scans=300, seed=1, sites=["antwerp", "rotterdam"], progress=False
    )
    config = load_config(
        Path(__file__).resolve().parents[2] / "configs" / "default.yaml",
        [
            "tracking.experiment=scanml-bench",
            "tracking.registered_model=null",
            f"train.runs_dir={tmp / 'runs'}",
            "train.early_stopping_patience=null",
        ],
    )
    started = time.time()
    result = train(config, data_dir, progress=False)
    history = (
        mlflow.MlflowClient().get_metric_history(result.run_id, "val/auroc")
        if result.run_id
        else []
    )
    reached = [m for m in sorted(history, key=lambda m: m.step) if m.value >= 0.95]
    if reached:
        report.add(
            "training",
            "time to val scan AUROC ≥ 0.95 (300 scans, 2 sites)",
            (reached[0].timestamp / 1000 - started) / 60,
            "min",
            f"epoch {reached[0].step}; target < 15",
        )
    else:
        best = max((m.value for m in history), default=float("nan"))
        report.add(
            "training",
            "best val scan AUROC (0.95 not reached)",
            best,
            "AUROC",
            f"{(time.time() - started) / 60:.1f} min, {config.train.epochs} epochs",
        )


def _best_time(call: Callable[[], Any], repeats: int, device: torch.device) -> float:
    call()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        call()
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _metric_key(section: str, what: str) -> str:
    text = f"{section}/{what}".lower()
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in text)[:250]
