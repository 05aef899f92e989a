"""Finding models, runs and experiments in MLflow, with errors that say what does exist.

A user who types ``models:/scanml-smoke@champoin`` should read, in one
line, that the alias is unknown and which aliases the model has, not a
traceback from deep inside MLflow. Every lookup here raises
:class:`RegistryLookupError` (a ``ValueError``) with such a line; the command line
prints it and exits with status 2.

:func:`resolve_model` also answers which registered version a URI points
at *now* (``@champion`` moves), which is what a scores table or a report
must record.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from scanml.tracking import resolve_tracking_uri

__all__ = [
    "RegistryLookupError",
    "ResolvedModel",
    "find_experiment",
    "find_run",
    "resolve_model",
    "versions_of_run",
]

log = logging.getLogger(__name__)

_MODEL_URI_FORMS = "runs:/RUN_ID/model, models:/NAME/VERSION, models:/NAME@ALIAS or a model folder"
_MODELS_URI = re.compile(
    r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[^/@]+)|@(?P<alias>[^/@]+))?/?$"
)
_RUNS_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)(?:/(?P<path>.*))?$")
_CONFIG_FILE = "model.json"
_MAX_LISTED = 12


class RegistryLookupError(ValueError):
    """A model, run or experiment that is not there; the message names what is."""


@dataclass(frozen=True)
class ResolvedModel:
    """What a model URI points at: the registered version (if any) and the run that logged it."""

    uri: str
    name: str | None = None
    version: str | None = None
    run_id: str | None = None

    @property
    def registry_uri(self) -> str | None:
        """``models:/NAME/VERSION``: the same model even after an alias moves."""
        return f"models:/{self.name}/{self.version}" if self.name and self.version else None

    def __str__(self) -> str:
        parts = [f"version {self.version} of {self.name}"] if self.registry_uri else []
        parts += [f"run {self.run_id}"] if self.run_id else []
        return f"{self.uri} ({', '.join(parts)})" if parts else self.uri


def resolve_model(uri: str, *, tracking_uri: str | None = None) -> ResolvedModel:
    """Check that ``uri`` names a scanml model and say which version and run it is.

    ``uri`` is ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``,
    ``runs:/RUN_ID/PATH`` or a folder holding ``model.json`` (a bundle, or a
    downloaded MLflow model). Raises :class:`RegistryLookupError` naming what
    exists: registered models with their versions and aliases, experiments,
    the folder's contents.
    """
    uri = str(uri)
    if uri.startswith("models:/"):
        return _resolve_registered(uri, _client(tracking_uri))
    if uri.startswith("runs:/"):
        return _resolve_run_uri(uri, _client(tracking_uri))
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/", uri):  # s3://, dbfs:/, ...: let MLflow fetch it
        return ResolvedModel(uri)
    return _resolve_folder(uri)


def find_experiment(name: str, *, tracking_uri: str | None = None) -> str:
    """The id of experiment ``name``; raises :class:`RegistryLookupError` listing the experiments."""
    client = _client(tracking_uri)
    experiment = _call(client, lambda: client.get_experiment_by_name(name))
    if experiment is None:
        raise RegistryLookupError(
            f"no experiment {name!r} in {client.tracking_uri}; {_experiments_line(client)}"
        )
    return experiment.experiment_id


def find_run(run_id: str, *, tracking_uri: str | None = None) -> str:
    """The full id of a run given by its id or a unique prefix of it (``compare`` shows 12 characters)."""
    client = _client(tracking_uri)
    try:
        return client.get_run(run_id).info.run_id
    except MlflowException:
        pass
    if re.fullmatch(r"[0-9a-f]{4,31}", run_id):
        matches = {
            run.info.run_id
            for experiment in _call(client, lambda: client.search_experiments())
            for run in _call(
                client,
                lambda e=experiment: client.search_runs([e.experiment_id], max_results=5000),
            )
            if run.info.run_id.startswith(run_id)
        }
        if len(matches) == 1:
            return matches.pop()
        if len(matches) > 1:
            raise RegistryLookupError(
                f"run id prefix {run_id!r} matches {len(matches)} runs: {', '.join(sorted(matches))}"
            )
    raise RegistryLookupError(
        f"no run {run_id!r} in {client.tracking_uri}; {_experiments_line(client)}"
    )


def versions_of_run(
    run_id: str, *, name: str | None = None, tracking_uri: str | None = None
) -> list[ModelVersion]:
    """The registered versions a run logged (under ``name`` only, when given), newest first.

    Raises :class:`RegistryLookupError` when the run does not exist or registered nothing.
    """
    client = _client(tracking_uri)
    run_id = find_run(run_id, tracking_uri=client.tracking_uri)
    query = f"run_id='{run_id}'" + (f" and name='{name}'" if name else "")
    found = _call(client, lambda: client.search_model_versions(query))
    if not found:
        where = f" under {name!r}" if name else ""
        raise RegistryLookupError(
            f"run {run_id} registered no model version{where}; {_registered_line(client)}"
        )
    return sorted(found, key=lambda v: (v.name, -int(v.version)))


# -- the URI forms --------------------------------------------------------------------------


def _resolve_registered(uri: str, client: MlflowClient) -> ResolvedModel:
    match = _MODELS_URI.match(uri)
    if not match or not (match["version"] or match["alias"]):
        raise RegistryLookupError(
            f"{uri}: a registered model needs a version or an alias "
            f"(models:/NAME/VERSION or models:/NAME@ALIAS); {_registered_line(client)}"
        )
    name = match["name"]
    try:
        _call(client, lambda: client.get_registered_model(name), reraise_missing=True)
    except MlflowException:
        raise RegistryLookupError(
            f"{uri}: no registered model {name!r} in {client.tracking_uri}; "
            f"{_registered_line(client)}"
        ) from None
    try:
        if match["alias"]:
            found = _call(
                client,
                lambda: client.get_model_version_by_alias(name, match["alias"]),
                reraise_missing=True,
            )
        else:
            found = _call(
                client,
                lambda: client.get_model_version(name, match["version"]),
                reraise_missing=True,
            )
    except MlflowException:
        what = f"alias {match['alias']!r}" if match["alias"] else f"version {match['version']!r}"
        raise RegistryLookupError(
            f"{uri}: registered model {name!r} has no {what}; it has {_versions_of(client, name)}"
        ) from None
    return ResolvedModel(uri, name=name, version=str(found.version), run_id=found.run_id)


def _resolve_run_uri(uri: str, client: MlflowClient) -> ResolvedModel:
    match = _RUNS_URI.match(uri)
    if not match:
        raise RegistryLookupError(f"{uri}: not a run URI; give {_MODEL_URI_FORMS}")
    run_id = match["run_id"]
    try:
        _call(client, lambda: client.get_run(run_id), reraise_missing=True)
    except MlflowException:
        raise RegistryLookupError(
            f"{uri}: no run {run_id!r} in {client.tracking_uri}; {_experiments_line(client)}"
        ) from None
    path = (match["path"] or "").strip("/")
    names = _logged_model_names(client, run_id)
    if names is not None and path.split("/")[0] not in names:
        listed = ", ".join(f"runs:/{run_id}/{n}" for n in names) if names else "none"
        raise RegistryLookupError(
            f"{uri}: run {run_id} logged no model {path!r}; its models: {listed}"
        )
    versions = _call(client, lambda: client.search_model_versions(f"run_id='{run_id}'"))
    newest = max(versions, key=lambda v: int(v.version)) if len(versions) == 1 else None
    return ResolvedModel(
        uri,
        name=newest.name if newest else None,
        version=str(newest.version) if newest else None,
        run_id=run_id,
    )


def _resolve_folder(uri: str) -> ResolvedModel:
    folder = Path(uri).expanduser()
    if not folder.exists():
        parent = folder.parent if str(folder.parent) else Path(".")
        near = ""
        if parent.is_dir():
            siblings = sorted(p.name for p in parent.iterdir() if p.is_dir())[:_MAX_LISTED]
            near = f"; folders in {parent}: {', '.join(siblings) if siblings else 'none'}"
        raise RegistryLookupError(f"{uri}: no such model folder (give {_MODEL_URI_FORMS}){near}")
    configs = [folder] if folder.is_file() else sorted(folder.rglob(_CONFIG_FILE))
    if not configs or (folder.is_file() and folder.name != _CONFIG_FILE):
        raise RegistryLookupError(
            f"{uri}: no scanml model here ({_CONFIG_FILE} + model.safetensors); "
            f"give {_MODEL_URI_FORMS}"
        )
    if len(configs) > 1:
        raise RegistryLookupError(
            f"{uri}: {len(configs)} scanml models inside; give one of "
            + ", ".join(str(c.parent) for c in configs[:_MAX_LISTED])
        )
    try:
        metadata = json.loads(configs[0].read_text()).get("metadata", {})
    except (OSError, ValueError) as exc:
        raise RegistryLookupError(f"{configs[0]}: not readable as a scanml model: {exc}") from None
    return ResolvedModel(uri, run_id=metadata.get("run_id"))


# -- what exists ------------------------------------------------------------------------


def _registered_line(client: MlflowClient) -> str:
    models = _call(client, lambda: client.search_registered_models(max_results=100))
    if not models:
        return f"the store {client.tracking_uri} holds no registered model (train one first)"
    described = [f"{m.name} ({_versions_of(client, m.name)})" for m in models[:_MAX_LISTED]]
    more = f" and {len(models) - _MAX_LISTED} more" if len(models) > _MAX_LISTED else ""
    return "registered models: " + "; ".join(described) + more


def _versions_of(client: MlflowClient, name: str) -> str:
    versions = sorted(
        _call(client, lambda: client.search_model_versions(f"name='{name}'")),
        key=lambda v: int(v.version),
    )
    model = _call(client, lambda: client.get_registered_model(name))
    aliases = getattr(model, "aliases", {}) or {}
    numbers = ", ".join(str(v.version) for v in versions[-_MAX_LISTED:]) or "none"
    alias_text = (
        ", ".join(f"@{alias} -> {version}" for alias, version in sorted(aliases.items()))
        if aliases
        else "none"
    )
    return f"versions {numbers}; aliases {alias_text}"


def _experiments_line(client: MlflowClient) -> str:
    experiments = [
        e
        for e in _call(client, lambda: client.search_experiments())
        if e.lifecycle_stage == "active"
    ]
    if not experiments:
        return f"the store {client.tracking_uri} holds no experiment"
    names = [e.name for e in experiments[:_MAX_LISTED]]
    return "experiments: " + ", ".join(names)


def _logged_model_names(client: MlflowClient, run_id: str) -> list[str] | None:
    """Names of the models a run logged (MLflow 3 logged models), or None if not knowable."""
    try:
        run = client.get_run(run_id)
        models = client.search_logged_models(
            experiment_ids=[run.info.experiment_id],
            filter_string=f"source_run_id = '{run_id}'",
        )
    except (MlflowException, AttributeError, TypeError):
        return None
    return sorted({model.name for model in models})


def _client(tracking_uri: str | None) -> MlflowClient:
    return MlflowClient(resolve_tracking_uri(tracking_uri))


def _call(client: MlflowClient, call, *, reraise_missing: bool = False):
    """Run one MLflow call; an unreachable store becomes a one-line :class:`RegistryLookupError`."""
    try:
        return call()
    except MlflowException as exc:
        if reraise_missing and exc.error_code in (
            "RESOURCE_DOES_NOT_EXIST",
            "INVALID_PARAMETER_VALUE",
        ):
            raise
        if reraise_missing and "not found" in str(exc).lower():
            raise
        raise RegistryLookupError(
            f"MLflow store {client.tracking_uri}: {str(exc).splitlines()[0][:300]}"
        ) from None
    except OSError as exc:
        raise RegistryLookupError(
            f"MLflow store {client.tracking_uri} is not reachable: {exc}"
        ) from None
