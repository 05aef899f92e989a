"""The scanml model as MLflow serves it: a table of paths in, the scores table out.

:class:`ScanmlPyfunc` runs the same :class:`~scanml.predict.Predictor` and
the same per-scan code as ``scanml score`` (:func:`scanml.scoring.score_paths`),
so ``mlflow models predict``, ``mlflow.pyfunc.spark_udf`` and ``scanml score``
can never disagree. :func:`log_model` logs it as *code*
(``pyfunc_entry.py``) plus a weights folder, so loading it never unpickles
anything, and registers it with a description.

This module sits above scoring; :mod:`scanml.tracking` (below every step)
knows nothing of it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pyarrow as pa
from mlflow import MlflowClient
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import Array, ColSpec, Object, Property, Schema

from scanml.metrics import variants_phrase
from scanml.models import ModelBundle
from scanml.predict import Predictor
from scanml.scoring import SCORES_SCHEMA, score_paths
from scanml.tracking import _version, using_tracking_uri

__all__ = ["BUNDLE_ARTIFACT", "LoggedModel", "ScanmlPyfunc", "log_model"]

#: The artifact folder inside a logged model that holds the weights and model.json.
BUNDLE_ARTIFACT = "bundle"


class ScanmlPyfunc(PythonModel):
    """A table with a ``path`` column in; the scores table's columns out.

    Loading reads the weights folder logged beside the code; predicting runs
    the same :class:`~scanml.predict.Predictor` and the same per-scan code as
    ``scanml score``, so the two can never disagree.
    """

    def load_context(self, context: Any) -> None:
        self.bundle = ModelBundle.load(context.artifacts[BUNDLE_ARTIFACT])
        self.predictor = Predictor(self.bundle, device="auto")
        self.model_uri = (context.model_config or {}).get("model_uri", "")

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ):
        if "path" not in model_input.columns:
            raise ValueError(
                f"the input needs a 'path' column; got columns {list(model_input.columns)}"
            )
        return score_paths(
            self.predictor,
            [str(path) for path in model_input["path"]],
            model_uri=self.model_uri,
            threshold=self.bundle.threshold,
        )


@dataclass(frozen=True)
class LoggedModel:
    """Where a logged model can be found again."""

    model_uri: str
    registered_name: str | None
    version: str | None

    @property
    def registry_uri(self) -> str:
        """``models:/NAME/VERSION`` when registered, else the run's model URI."""
        if self.registered_name and self.version:
            return f"models:/{self.registered_name}/{self.version}"
        return self.model_uri


def log_model(
    bundle_dir: str | Path,
    *,
    run_id: str,
    tracking_uri: str,
    registered_model: str | None,
    example_paths: list[str],
    description: str | None = None,
) -> LoggedModel:
    """Log a saved model folder as a pyfunc model (code + weights, no pickle) and register it.

    The output schema is the scores table's (``scanml.scoring.SCORES_SCHEMA``),
    declared rather than inferred: an example where no scan has a region
    would otherwise make MLflow type the whole output as ``Any``. MLflow
    validates the signature by scoring ``example_paths`` for real.
    ``description`` goes on the registered version (the registry's page
    shows it); without one, a line naming the run and the threshold.
    """
    input_example = pd.DataFrame({"path": [str(path) for path in example_paths]})
    signature = mlflow.models.ModelSignature(
        inputs=Schema([ColSpec("string", "path")]), outputs=_output_schema()
    )
    package_dir = Path(__file__).resolve().parent
    with (
        using_tracking_uri(tracking_uri),
        mlflow.start_run(run_id=run_id),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", category=UserWarning)  # input-example type notes
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(package_dir / "pyfunc_entry.py"),
            artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
            code_paths=[str(package_dir)],
            signature=signature,
            input_example=input_example,
            pip_requirements=_pip_requirements(),
            model_config={"model_uri": f"runs:/{run_id}/model"},
            registered_model_name=registered_model,
            await_registration_for=60,
        )
    version = (
        str(info.registered_model_version)
        if getattr(info, "registered_model_version", None)
        else None
    )
    if registered_model and version:
        MlflowClient(tracking_uri).update_model_version(
            registered_model,
            version,
            description=description or _default_description(bundle_dir, run_id),
        )
    return LoggedModel(model_uri=info.model_uri, registered_name=registered_model, version=version)


def _default_description(bundle_dir: str | Path, run_id: str) -> str:
    bundle = ModelBundle.load(bundle_dir)
    meta = bundle.metadata
    calibrated = (
        f" calibrated at {meta['target_far']:.2%} FAR on {meta.get('calibration_scans', '?')} "
        "clean validation scans" + variants_phrase(meta.get("calibration_variant_scores", 0))
        if "target_far" in meta
        else ""
    )
    return (
        f"{bundle.architecture} on {', '.join(bundle.preprocessing.channels)} at "
        f"{bundle.preprocessing.spacing_mm:g} mm/px, trained in run {run_id}; threshold "
        f"{bundle.threshold:.4f}{calibrated}."
    )


def _output_schema() -> Schema:
    """The scores table's Arrow schema as an MLflow schema."""
    return Schema(
        [ColSpec(_mlflow_type(f.type), f.name, required=not f.nullable) for f in SCORES_SCHEMA]
    )


def _mlflow_type(arrow_type: pa.DataType) -> Any:
    if pa.types.is_list(arrow_type):
        return Array(_mlflow_type(arrow_type.value_type))
    if pa.types.is_struct(arrow_type):
        return Object([Property(f.name, _mlflow_type(f.type)) for f in arrow_type])
    scalar = {
        pa.string(): "string",
        pa.float64(): "double",
        pa.float32(): "float",
        pa.bool_(): "boolean",
        pa.int32(): "integer",
        pa.int64(): "long",
    }
    if arrow_type not in scalar:
        raise TypeError(f"no MLflow type for Arrow type {arrow_type}")
    return scalar[arrow_type]


def _pip_requirements() -> list[str]:
    names = (
        "torch",
        "torchvision",
        "albumentations",
        "pydicom",
        "mlflow",
        "scikit-learn",
        "scipy",
        "numpy",
        "pandas",
        "pyarrow",
        "safetensors",
        "pillow",
        "tifffile",
        "pydantic",
        "pyyaml",
    )
    return [f"{name}=={_version(name)}" for name in names if _version(name) != "unknown"]
