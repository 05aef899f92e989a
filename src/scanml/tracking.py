"""MLflow tracking that never kills a training run.

:class:`Tracker` wraps :class:`mlflow.MlflowClient` for one run. Every call
is bounded (a few HTTP retries with a short timeout instead of MLflow's
default of minutes); when the tracking server is down it warns once, keeps
the metrics, params and tags it could not send, and sends them when the
server answers again. Training goes on either way, and checkpoints never
depend on it.

This module sits below the rest of scanml: it imports none of its steps.
The model as MLflow serves it (``ScanmlPyfunc``, ``log_model``) is
:mod:`scanml.pyfunc`, which sits above scoring.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow import MlflowClient

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from scanml.dataset import ScanDataset

__all__ = [
    "DEFAULT_TRACKING_URI",
    "DESCRIPTION_TAG",
    "Tracker",
    "bound_http_retries",
    "http_retries_bounded",
    "resolve_tracking_uri",
    "run_tags",
    "using_tracking_uri",
]

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
#: The tag the MLflow UI shows (and edits) as a run's description.
DESCRIPTION_TAG = "mlflow.note.content"
# Moved to scanml.pyfunc; still importable from here (lazily, see __getattr__)
# so that code importing them from tracking, and the pyfunc_entry.py of models
# logged before the move, keep working.
_MOVED_TO_PYFUNC = ("BUNDLE_ARTIFACT", "LoggedModel", "ScanmlPyfunc", "log_model")
_HTTP_BOUND_VARIABLES = (
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
)
_PACKAGES = ("torch", "torchvision", "albumentations", "pydicom", "mlflow", "scikit-learn", "numpy")


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The configured URI, else ``$MLFLOW_TRACKING_URI``, else the local sqlite store."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


@contextlib.contextmanager
def using_tracking_uri(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's process-wide store at ``tracking_uri`` for one block, then put it back.

    MLflow's fluent calls (``start_run``, ``log_model``, ``search_runs``) and
    its ``models:/`` downloads read one process-wide URI, and
    ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI``. Left
    set, it sends every later call of the process (a notebook's next cell,
    the next ``score`` in the same session) to this store whatever the
    environment says: a ``models:/`` name registered elsewhere is then "not
    found".
    """
    from mlflow.tracking._tracking_service import utils as tracking_state

    # MLflow has no public way to tell a URI set in-process from one read from the environment.
    previous_uri = getattr(tracking_state, "_tracking_uri", None)
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous_uri)  # None: back to reading the environment
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


def bound_http_retries(max_retries: int = 2, timeout_s: float = 10.0) -> None:
    """Cap MLflow's HTTP retries: by default each call to a down server retries for minutes.

    Values the user already exported win, so an operator can still raise them.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(timeout_s))))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


@contextlib.contextmanager
def http_retries_bounded(max_retries: int = 2, timeout_s: float = 10.0) -> Iterator[None]:
    """:func:`bound_http_retries` for one block, the variables as they were afterwards.

    MLflow reads the bounds from the environment, which is the whole
    process's: a command run from a notebook, or a scoring call, must not
    leave its bounds to every later call (and child process) of the session.
    """
    saved = {name: os.environ.get(name) for name in _HTTP_BOUND_VARIABLES}
    bound_http_retries(max_retries, timeout_s)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class Tracker:
    """One MLflow run, tolerant of an unreachable tracking server.

    Calls that fail are kept (metrics, params, tags) and replayed once the
    server answers again; artifacts that fail are skipped with a warning
    because they can be large and are rebuilt from checkpoints.
    """

    tracking_uri: str
    experiment: str
    max_retries: int = 2
    timeout_s: float = 10.0
    retry_after_s: float = 30.0
    run_id: str | None = None
    experiment_id: str | None = None
    _client: MlflowClient = field(init=False, repr=False)
    _pending: list[tuple[str, tuple[Any, ...]]] = field(
        default_factory=list, init=False, repr=False
    )
    _down_since: float | None = field(default=None, init=False, repr=False)
    _monitor: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        bound_http_retries(self.max_retries, self.timeout_s)
        self._client = MlflowClient(self.tracking_uri)

    @property
    def available(self) -> bool:
        return self._down_since is None

    def start(
        self,
        *,
        run_id: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        description: str | None = None,
    ) -> str | None:
        """Create the run (or reopen ``run_id`` to resume it); returns its id, or None if unreachable.

        ``description`` is what the MLflow UI shows at the top of the run page.
        """
        if run_id is not None:
            self.run_id = run_id
            self._guard("reopen run", lambda: self._client.update_run(run_id, status="RUNNING"))
            self.experiment_id = self._guard(
                "read run", lambda: self._client.get_run(run_id).info.experiment_id
            )
            if description:
                self.set_description(description)
            return run_id

        def create() -> str:
            experiment = self._client.get_experiment_by_name(self.experiment)
            self.experiment_id = (
                experiment.experiment_id
                if experiment
                else self._client.create_experiment(self.experiment)
            )
            return self._client.create_run(
                self.experiment_id,
                run_name=run_name,
                tags={**(tags or {}), **({DESCRIPTION_TAG: description} if description else {})},
            ).info.run_id

        self.run_id = self._guard("create run", create)
        return self.run_id

    def set_description(self, description: str) -> None:
        """Replace the run's description (Markdown, shown at the top of its page)."""
        self.set_tags({DESCRIPTION_TAG: description})

    def start_system_metrics(self, sampling_interval_s: float = 10.0) -> None:
        """CPU, memory, disk, network (and GPU where there is one) as ``system/*`` metrics."""
        if self.run_id is None or not self.available:
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        try:
            self._monitor = SystemMetricsMonitor(
                self.run_id,
                sampling_interval=sampling_interval_s,
                resume_logging=True,
                tracking_uri=self.tracking_uri,
            )
            self._monitor.start()
        except Exception as exc:  # psutil missing or the server gone: not worth stopping for
            log.warning("system metrics are off: %s", exc)
            self._monitor = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, _param_value(value)) for key, value in params.items()]
        for start in range(0, len(items), 100):  # the store takes at most 100 params a batch
            self._replayable("log_batch", (self.run_id, [], items[start : start + 100], []))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        if items:
            self._replayable("log_batch", (self.run_id, items, [], []))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(key, str(value)) for key, value in tags.items()]
        self._replayable("log_batch", (self.run_id, [], [], items))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.run_id is not None:
            self._guard(
                f"log artifact {path}",
                lambda: self._client.log_artifact(self.run_id, str(path), artifact_path),
            )

    def log_figure(self, figure: Figure, artifact_file: str) -> None:
        if self.run_id is not None:
            self._guard(
                f"log figure {artifact_file}",
                lambda: self._client.log_figure(self.run_id, figure, artifact_file),
            )

    def log_image(self, image: Any, artifact_file: str) -> None:
        if self.run_id is not None:
            self._guard(
                f"log image {artifact_file}",
                lambda: self._client.log_image(self.run_id, image, artifact_file=artifact_file),
            )

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.run_id is not None:
            self._guard(
                f"log {artifact_file}",
                lambda: self._client.log_text(self.run_id, text, artifact_file),
            )

    def log_dataset(self, dataset: ScanDataset, *, name: str, context: str) -> None:
        """Record the training data as a run input, with the manifest's digest."""
        if self.run_id is None:
            return

        def send() -> None:
            from mlflow.entities import InputTag

            with warnings.catch_warnings():  # schema hints about integer columns
                warnings.simplefilter("ignore", UserWarning)
                ml_dataset = mlflow.data.from_pandas(
                    dataset.to_pandas(),
                    source=dataset.root.as_uri(),
                    name=name,
                    digest=dataset.digest[:36],
                )
                entity = ml_dataset._to_mlflow_entity()
            tags = [InputTag(key="mlflow.data.context", value=context)]
            self._client.log_inputs(self.run_id, [mlflow.entities.DatasetInput(entity, tags)])

        self._guard("log dataset", send)

    def end(self, status: str = "FINISHED") -> None:
        """Stop system metrics, flush what is pending, and close the run."""
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
        if self.run_id is None:
            return
        self._down_since = None  # one last honest try for whatever is pending
        self._flush()
        self._guard("end run", lambda: self._client.set_terminated(self.run_id, status=status))

    # -- failure handling ---------------------------------------------------------------

    def _replayable(self, method: str, args: tuple[Any, ...]) -> None:
        if self.run_id is None:
            return
        self._pending.append((method, args))
        self._flush()

    def _flush(self) -> None:
        if (
            self._down_since is not None
            and time.monotonic() - self._down_since < self.retry_after_s
        ):
            return
        while self._pending:
            method, args = self._pending[0]
            if not self._guard(
                method, lambda m=method, a=args: getattr(self._client, m)(*a), ok=True
            ):
                return
            self._pending.pop(0)

    def _guard(self, what: str, call: Callable[[], Any], *, ok: Any = None) -> Any:
        """Run one tracking call; on failure warn (once per outage) and carry on."""
        if (
            self._down_since is not None
            and time.monotonic() - self._down_since < self.retry_after_s
        ):
            return None
        try:
            result = call()
        except Exception as exc:
            if self._down_since is None:
                warnings.warn(
                    f"MLflow tracking at {self.tracking_uri} failed ({what}: {type(exc).__name__}: "
                    f"{str(exc)[:200]}); training goes on and pending metrics are sent when it answers",
                    RuntimeWarning,
                    stacklevel=3,
                )
            self._down_since = time.monotonic()
            return None
        if self._down_since is not None:
            log.warning("MLflow tracking at %s answers again", self.tracking_uri)
            self._down_since = None
        return ok if ok is not None else result


def run_tags(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Git commit, dirty flag and package versions: what is needed to reproduce a run."""
    tags = {f"version.{name}": _version(name) for name in ("scanml", *_PACKAGES)}
    commit, dirty = _git_state()
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git.commit"] = commit
        tags["git.dirty"] = str(dirty).lower()
    tags.update(extra or {})
    return tags


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def _git_state() -> tuple[str | None, bool]:
    """The commit of the scanml source that runs (not of the working folder), and whether it is dirty."""
    source = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=source, capture_output=True, text=True, timeout=5, check=True
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return None, False
    return commit or None, bool(status.strip())


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_PYFUNC:
        from scanml import pyfunc

        return getattr(pyfunc, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
