"""Model packages: a model leaves one agency with a model card and arrives registered at another.

A model package is one ``.zip`` file holding a BagIt bag (checksummed like
a scan package, :mod:`scanml.exchange`)::

    data/model/model.safetensors   the weights (tensors only: loading runs no code)
    data/model/model.json          preprocessing, threshold, class names (scanml.models)
    data/model_card.json           the card, for programs
    data/MODEL_CARD.md             the card, for people

The card says what the model was trained on (sites and scan counts, no
paths or scan ids), how it did per site on its validation scans, what it
is for, its known limits, its parent when it was fine-tuned from another
model, and the scanml version. :func:`import_model` verifies the bag,
registers a new version in the local MLflow registry with lineage tags
(origin, package checksum, parent) and returns its ``models:/`` URI, ready
for ``scanml score`` or for fine-tuning with ``--set model.weights=URI``.
The weights are copied untouched, so the imported model scores
bit-identically to the original.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlflow import MlflowClient

from scanml import __version__
from scanml.exchange import ExchangeError, verify_package
from scanml.fsutil import write_atomically
from scanml.models import CONFIG_FILE, WEIGHTS_FILE, ModelBundle

__all__ = ["ImportedModel", "ModelCard", "export_model", "import_model"]

CARD_JSON = "model_card.json"
CARD_MARKDOWN = "MODEL_CARD.md"
IMPORT_EXPERIMENT = "scanml-imports"
DEFAULT_INTENDED_USE = (
    "Ranking container X-ray scans for analyst review (decision support); "
    "not an automatic release or seizure decision."
)
_CARD_METRICS = ("auroc", "average_precision", "dr_at_far_1pct", "pointing_hit_rate", "n_scans")


@dataclass
class ModelCard:
    """What another agency needs to judge a model before relying on it."""

    model_name: str | None
    source_uri: str
    architecture: str
    channels: list[str]
    spacing_mm: float
    class_names: list[str]
    threshold: float
    target_far: float | None
    training_sites: dict[str, dict[str, int]]  # site -> {"scans", "anomalous"}
    validation_metrics: dict[str, dict[str, float]]  # "all" or site -> metric -> value
    parent: str | None
    intended_use: str
    limits: list[str]
    scanml_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def to_markdown(self) -> str:
        lines = [
            f"# Model card: {self.model_name or 'scanml model'}",
            "",
            f"- architecture: {self.architecture}; channels {', '.join(self.channels)}; "
            f"{self.spacing_mm} mm per pixel",
            f"- classes: {', '.join(self.class_names)}",
            f"- threshold: {self.threshold:.6f}"
            + (
                f" (set at {self.target_far:.2%} false alarms on the training sites' validation scans)"
                if self.target_far
                else ""
            ),
            f"- parent model: {self.parent or 'none (trained from scratch or torchvision weights)'}",
            f"- scanml version: {self.scanml_version}",
            "",
            "## Training data",
            "",
            "| site | scans | anomalous |",
            "|---|---:|---:|",
        ]
        lines += [
            f"| {site} | {c['scans']} | {c['anomalous']} |"
            for site, c in self.training_sites.items()
        ]
        if not self.training_sites:
            lines.append("| (not recorded) | | |")
        lines += ["", "## Validation metrics", "", "| scope | " + " | ".join(_CARD_METRICS) + " |"]
        lines.append("|---|" + "---:|" * len(_CARD_METRICS))
        for scope, values in self.validation_metrics.items():
            lines.append(
                f"| {scope} | " + " | ".join(_fmt(values.get(m)) for m in _CARD_METRICS) + " |"
            )
        lines += ["", "## Intended use", "", self.intended_use, "", "## Known limits", ""]
        lines += [f"- {limit}" for limit in self.limits]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ImportedModel:
    """Where an imported model was registered."""

    model_uri: str  # models:/NAME/VERSION
    run_id: str
    card: ModelCard

    def __str__(self) -> str:
        return f"model: {self.model_uri}\nrun id: {self.run_id}"


def export_model(
    model_uri: str,
    out: str | os.PathLike[str],
    *,
    intended_use: str = DEFAULT_INTENDED_USE,
    extra_limits: tuple[str, ...] = (),
) -> ModelCard:
    """Write the model at ``model_uri`` and its card into the package file ``out`` (``.zip``)."""
    out = Path(out)
    if out.exists():
        raise ExchangeError(f"{out}: already exists; choose a new file name")
    bundle = ModelBundle.load(model_uri)
    card = _card(bundle, model_uri, intended_use, extra_limits)
    with tempfile.TemporaryDirectory(prefix="scanml-model-package-") as tmp:
        bag = Path(tmp) / "bag"
        bundle.save(bag / "model")
        (bag / CARD_JSON).write_text(json.dumps(card.to_dict(), indent=2, default=float) + "\n")
        (bag / CARD_MARKDOWN).write_text(card.to_markdown())
        import bagit

        bagit.make_bag(
            str(bag),
            bag_info={
                "Bag-Software-Agent": f"scanml {__version__}",
                "External-Description": "scanml model package",
            },
            checksums=["sha256"],
        )

        def write_zip(partial: Path) -> None:
            with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for path in sorted(bag.rglob("*")):
                    if path.is_file():
                        archive.write(path, path.relative_to(bag).as_posix())

        write_atomically(out, write_zip)
    return card


def import_model(
    package: str | os.PathLike[str],
    *,
    name: str | None = None,
    example: str | os.PathLike[str] | None = None,
    tracking_uri: str | None = None,
) -> ImportedModel:
    """Verify the package file and register its model in the local MLflow registry.

    ``name`` defaults to the name the model had where it came from.
    ``example`` is a scan MLflow scores to check the model's signature; by
    default a small simulated flat scan is written for that.
    """
    from scanml.pyfunc import log_model
    from scanml.tracking import resolve_tracking_uri, run_tags

    package = Path(package)
    if not package.is_file():
        raise ExchangeError(f"{package}: no such model package file")
    if example is not None and not Path(example).is_file():
        raise ExchangeError(f"--example {example}: no such scan file")
    digest = hashlib.sha256(package.read_bytes()).hexdigest()
    tracking_uri = resolve_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="scanml-model-import-") as tmp:
        bag = Path(tmp) / "bag"
        _extract(package, bag)
        verify_package(bag)
        card_data = json.loads((bag / "data" / CARD_JSON).read_text())
        card = ModelCard(**card_data)
        bundle_dir = bag / "data" / "model"
        bundle = ModelBundle.load(bundle_dir)  # refuses anything that is not a scanml bundle
        registered = name or card.model_name or "scanml-anomaly"
        lineage = {
            "scanml.lineage.origin_uri": card.source_uri,
            "scanml.lineage.package_sha256": digest,
            "scanml.lineage.parent": card.parent or "",
            "scanml.lineage.training_sites": ",".join(card.training_sites),
            "scanml.lineage.scanml_version": card.scanml_version,
        }
        # model.json only: the weights file stays byte for byte what was exported.
        config = json.loads((bundle_dir / CONFIG_FILE).read_text())
        config["metadata"] = {
            **config.get("metadata", {}),
            "lineage": lineage,
            "imported_from": package.name,
        }
        (bundle_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

        client = MlflowClient(tracking_uri)
        experiment = client.get_experiment_by_name(IMPORT_EXPERIMENT)
        experiment_id = (
            experiment.experiment_id if experiment else client.create_experiment(IMPORT_EXPERIMENT)
        )
        run = client.create_run(
            experiment_id, run_name=f"import {package.name}", tags=run_tags(lineage)
        )
        run_id = run.info.run_id
        try:
            client.log_artifact(run_id, str(bag / "data" / CARD_MARKDOWN))
            client.log_artifact(run_id, str(bag / "data" / CARD_JSON))
            example_path = Path(example) if example else _flat_scan(bundle, Path(tmp))
            logged = log_model(
                bundle_dir,
                run_id=run_id,
                tracking_uri=tracking_uri,
                registered_model=registered,
                example_paths=[str(example_path)],
            )
            for key, value in lineage.items():
                client.set_model_version_tag(registered, logged.version, key, value)
            client.update_model_version(registered, logged.version, description=card.to_markdown())
            client.set_terminated(run_id, "FINISHED")
        except BaseException:
            client.set_terminated(run_id, "FAILED")
            raise
    return ImportedModel(logged.registry_uri, run_id, card)


# -- helpers ----------------------------------------------------------------------------


def _card(
    bundle: ModelBundle, model_uri: str, intended_use: str, extra_limits: tuple[str, ...]
) -> ModelCard:
    params, metrics = _run_record(bundle.metadata.get("run_id"))
    sites = _training_sites(params)
    validation: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if not key.startswith("best/"):
            continue
        parts = key.removeprefix("best/").split("/")
        if len(parts) == 1 and parts[0] in _CARD_METRICS:
            validation.setdefault("all", {})[parts[0]] = value
        elif len(parts) == 3 and parts[0] == "site" and parts[2] in _CARD_METRICS:
            validation.setdefault(parts[1], {})[parts[2]] = value
    weights = params.get("model.weights")
    parent = None
    if weights and weights != "None":  # fine-tuned: a model URI, a folder or torchvision weights
        parent = weights if _is_model_reference(weights) else Path(weights).name
    parent = parent or bundle.metadata.get("lineage", {}).get("scanml.lineage.origin_uri")
    trained_on = ", ".join(sites) or "unrecorded sites"
    limits = [
        f"Trained on scans from {trained_on} only: judge it on your own scans before relying on it "
        "(scanml evaluate --calibrate-on SITE shows the false-alarm rate its threshold gives there).",
        "The threshold was set on the training sites' clean validation scans; at another site "
        "it does not give the same false-alarm rate: recalibrate it (scanml evaluate --calibrate-far).",
        f"Reads {'dual' if len(bundle.preprocessing.channels) > 1 else 'single'}-energy scans "
        f"({', '.join(bundle.preprocessing.channels)}) resampled to "
        f"{bundle.preprocessing.spacing_mm} mm per pixel; objects much smaller than a few pixels "
        "at that resolution are beyond it.",
        "Detects only the listed classes; anything else is at most an anomaly.",
        *extra_limits,
    ]
    name = (
        model_uri.removeprefix("models:/").split("/")[0].split("@")[0]
        if model_uri.startswith("models:/")
        else None
    )
    return ModelCard(
        model_name=name,
        # a local folder's path says where it lies at the sender's; its name is enough
        source_uri=model_uri if _is_model_reference(model_uri) else Path(model_uri).name,
        architecture=bundle.architecture,
        channels=list(bundle.preprocessing.channels),
        spacing_mm=float(bundle.preprocessing.spacing_mm),
        class_names=bundle.class_names,
        threshold=float(bundle.threshold),
        target_far=bundle.metadata.get("target_far"),
        training_sites=sites,
        validation_metrics=dict(sorted(validation.items(), key=lambda kv: kv[0] != "all")),
        parent=parent,
        intended_use=intended_use,
        limits=limits,
    )


def _run_record(run_id: str | None) -> tuple[dict[str, str], dict[str, float]]:
    """The training run's params and latest metrics, or nothing when MLflow does not know it."""
    if not run_id:
        return {}, {}
    from scanml.tracking import resolve_tracking_uri

    try:
        run = MlflowClient(resolve_tracking_uri()).get_run(run_id)
    except Exception:  # another store, or unreachable: the card says "not recorded"
        return {}, {}
    return dict(run.data.params), dict(run.data.metrics)


def _training_sites(params: dict[str, str]) -> dict[str, dict[str, int]]:
    """Scans per site in the training split, recomputed from the run's data and split settings."""
    from scanml.dataset import DataError, assign_splits, load_dataset

    path = params.get("data.path")
    if not path or not Path(path).is_dir():
        return {}
    try:
        dataset = assign_splits(
            load_dataset(path),
            val_fraction=float(params.get("data.val_fraction", 0.2)),
            test_fraction=float(params.get("data.test_fraction", 0.1)),
            seed=int(params.get("seed", 0)),
        )
    except (DataError, FileNotFoundError, ValueError):
        return {}
    counts: dict[str, dict[str, int]] = {}
    for record in dataset.split("train").records:
        site = counts.setdefault(record.site, {"scans": 0, "anomalous": 0})
        site["scans"] += 1
        site["anomalous"] += int(record.label == 1)
    return dict(sorted(counts.items()))


def _is_model_reference(text: str) -> bool:
    return text.startswith(("models:/", "runs:/"))


def _extract(package: Path, target: Path) -> None:
    try:
        with zipfile.ZipFile(package) as archive:
            for member in archive.infolist():
                path = (target / member.filename).resolve()
                if not path.is_relative_to(target.resolve()):
                    raise ExchangeError(
                        f"{package}: member {member.filename!r} escapes the package"
                    )
            archive.extractall(target)
    except zipfile.BadZipFile as exc:
        raise ExchangeError(f"{package}: not a model package ({exc})") from None
    if (
        not (target / "data" / CARD_JSON).is_file()
        or not (target / "data" / "model" / WEIGHTS_FILE).is_file()
    ):
        raise ExchangeError(f"{package}: not a scanml model package (no model card or weights)")


def _flat_scan(bundle: ModelBundle, folder: Path) -> Path:
    """A small simulated scan of uniform cargo, for MLflow's signature check."""
    from scanml.io import Scan
    from scanml.io.dicom import write_dicom

    channels = list(bundle.preprocessing.channels)
    attenuation = np.full((len(channels), 400, 800), 1.5, dtype=np.float32)
    path = folder / "example.dcm"
    write_dicom(Scan(attenuation, (5.0, 5.0), channels, {"scan_id": "example"}), path)
    return path


def _fmt(value: float | None) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:.0f}" if float(value).is_integer() and value > 1 else f"{value:.3f}"
