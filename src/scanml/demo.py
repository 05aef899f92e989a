"""The main job end to end on simulated data: what ``make demo`` runs.

Generate a dataset, train the default configuration into the local MLflow
store, promote the new model to ``champion``, evaluate it on the held-out
test split, then score a fresh batch of scans (with two corrupt files among
them, as in real life) with overlays and DICOS threat reports. Each step is
the same library call a user makes; nothing here is demo-only logic.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from scanml.tracking import resolve_tracking_uri

__all__ = ["run_demo"]

log = logging.getLogger(__name__)


def run_demo(
    workdir: str | Path = ".",
    *,
    config: str | Path = "configs/default.yaml",
    n_scans: int = 300,
    n_incoming: int = 24,
    seed: int = 0,
) -> dict[str, Path | str]:
    """Run every step and print where the results are; returns the same locations."""
    from scanml.config import load_config
    from scanml.evaluation import evaluate
    from scanml.runs import promote
    from scanml.scoring import score
    from scanml.synth import generate_dataset
    from scanml.train import train

    workdir = Path(workdir).resolve()
    os.chdir(workdir)  # the MLflow store, runs/ and data/ are relative to the project
    data_dir = workdir / "data" / "raw" / "synth"
    incoming = workdir / "data" / "raw" / "incoming"
    processed = workdir / "data" / "processed"

    _step(f"1/5 simulating {n_scans} scans into {data_dir}")
    generate_dataset(
        out_dir=data_dir,
        n_scans=n_scans,
        seed=seed,
        sites=["antwerp", "rotterdam"],
        skip_existing=True,
    )

    _step(f"2/5 training {config}")
    result = train(load_config(config), data_dir)
    model_uri = result.model_uri or str(result.bundle_dir)
    if result.model_uri and result.model_uri.startswith("models:/"):
        name = result.model_uri.removeprefix("models:/").split("/")[0]
        change = promote(result.model_uri.rsplit("/", 1)[-1], name=name)
        print(change)
        model_uri = f"models:/{name}@champion"

    _step("3/5 evaluating on the held-out test split")
    report = evaluate(model_uri, data_dir, split="test", out_dir=processed / "evaluation")
    print(report.to_markdown())

    _step(
        f"4/5 simulating {n_incoming} new scans from a third site (santos) plus two corrupt files"
    )
    generate_dataset(
        out_dir=incoming, n_scans=n_incoming, seed=seed + 1000, sites=["santos"], skip_existing=True
    )
    (incoming / "scans" / "corrupt-empty.dcm").write_bytes(b"")
    (incoming / "scans" / "corrupt-truncated.dcm").write_bytes(
        next((incoming / "scans").glob("*.dcm")).read_bytes()[:2000]
    )

    _step("5/5 scoring the new scans")
    score(
        model_uri,
        str(incoming / "scans"),
        processed / "scores.parquet",
        overlays=processed / "overlays",
        tdr=processed / "tdr",
    )

    locations: dict[str, Path | str] = {
        "scores": processed / "scores.parquet",
        "overlays": processed / "overlays",
        "threat reports": processed / "tdr",
        "evaluation report": processed / "evaluation" / "report.md",
        "checkpoints": result.run_dir,
        "model": model_uri,
        "mlflow store": resolve_tracking_uri(),
    }
    _step("done")
    for what, where in locations.items():
        print(f"  {what:18s} {where}")
    print("  MLflow UI          make ui  (then open http://127.0.0.1:5000)")
    return locations


def _step(message: str) -> None:
    print(f"\n== scanml demo: {message}", flush=True)
