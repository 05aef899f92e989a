"""Bounded calls to the MLflow tracking server for commands other than training.

MLflow's HTTP client retries a refused or silent server for minutes by
default. A command that needs the server (resolving ``models:/NAME@alias``
for a scoring job) bounds every call with the same mechanism training uses
(:func:`scanml.tracking.bound_http_retries`), plus a wall-clock deadline
around the whole resolution, and fails with one line naming the server.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ModelSourceError",
    "ResolvedModel",
    "TrackingServerError",
    "bound_client_calls",
    "resolve_model",
]

# Per call: seconds to wait for the server, and retries after the first try.
SCORING_TIMEOUT_S = 5.0
SCORING_MAX_RETRIES = 1
# The whole resolution, retries included, never takes longer than this.
RESOLVE_DEADLINE_S = 25.0

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))/?$")
_RUNS_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)(?:/.*)?$")
_BUNDLE_CONFIG = "model.json"


class TrackingServerError(ConnectionError):
    """The tracking server did not answer in time; the message names it."""


class ModelSourceError(ValueError):
    """The model URI or folder names no model; the message says what is wrong."""


@dataclass(frozen=True)
class ResolvedModel:
    """The model a URI names at this moment.

    ``load_uri`` pins it (``models:/NAME/VERSION`` for an alias), so the
    scoring job loads exactly the version it recorded even if the alias
    moves meanwhile. ``name``, ``version`` and ``run_id`` are None where the
    source has none (a model folder).
    """

    uri: str
    load_uri: str
    name: str | None = None
    version: str | None = None
    run_id: str | None = None

    def describe(self) -> str:
        if self.name is not None:
            run = f" (run {self.run_id})" if self.run_id else ""
            return f"{self.name} version {self.version}{run}"
        if self.run_id is not None:
            return f"run {self.run_id}"
        return self.uri

    def same_model_as(self, name: str | None, version: str | None, run_id: str | None) -> bool:
        """Whether a table row's recorded model is this one."""
        if self.name is not None or name is not None:
            return (self.name, self.version) == (name, version)
        return self.run_id == run_id


def bound_client_calls() -> contextlib.AbstractContextManager[None]:
    """Bound every MLflow HTTP call made in the block as scoring does (values exported win)."""
    from scanml.tracking import http_retries_bounded

    return http_retries_bounded(SCORING_MAX_RETRIES, SCORING_TIMEOUT_S)


def resolve_model(uri: str, *, deadline_s: float = RESOLVE_DEADLINE_S) -> ResolvedModel:
    """Which model ``uri`` names: a registry version, a run's model, or a local folder.

    Raises :class:`ModelSourceError` for a URI or folder that names no
    model (a file that is not ``model.json``, a missing folder, an unknown
    registered name, alias or version) and :class:`TrackingServerError`
    when the tracking server does not answer within ``deadline_s``.
    """
    if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/", uri):
        return _local_model(uri)
    runs = _RUNS_URI.match(uri)
    if runs:
        return ResolvedModel(uri, uri, run_id=runs["run_id"])
    models = _MODELS_URI.match(uri)
    if not models:
        return ResolvedModel(uri, uri)  # another scheme (s3://, ...): loaded as given
    with bound_client_calls():
        return _with_deadline(lambda: _registry_model(uri, models), deadline_s)


def _local_model(source: str) -> ResolvedModel:
    path = Path(source).expanduser()
    if path.is_file() and path.name != _BUNDLE_CONFIG:
        raise ModelSourceError(
            f"--model {source}: a file, but not a model's {_BUNDLE_CONFIG}; pass the model folder"
        )
    if not path.exists():
        raise ModelSourceError(f"--model {source}: no such model folder")
    return ResolvedModel(source, os.path.abspath(path))


def _registry_model(uri: str, match: re.Match[str]) -> ResolvedModel:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from scanml.tracking import resolve_tracking_uri

    server = resolve_tracking_uri()
    client = MlflowClient(server)
    name, alias, version = match["name"], match["alias"], match["version"]
    # Each retry would log a warning; the one line that matters is the error below.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    try:
        if alias is not None:
            found = client.get_model_version_by_alias(name, alias)
        elif version.isdigit():
            found = client.get_model_version(name, version)
        else:
            raise ModelSourceError(f"--model {uri}: the version {version!r} is not a number")
    except MlflowException as exc:
        if _is_unreachable(exc):
            raise TrackingServerError(_unreachable(server, exc)) from None
        raise ModelSourceError(f"--model {uri}: {_first_line(exc)}") from None
    except OSError as exc:
        raise TrackingServerError(_unreachable(server, exc)) from None
    return ResolvedModel(
        uri, f"models:/{name}/{found.version}", name, str(found.version), found.run_id
    )


def _with_deadline(call, deadline_s: float) -> ResolvedModel:
    """``call()`` in a helper thread, abandoned (it holds no resource of ours) past the deadline."""
    from scanml.tracking import resolve_tracking_uri

    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return executor.submit(call).result(timeout=deadline_s)
    except concurrent.futures.TimeoutError:
        raise TrackingServerError(
            f"the tracking server {resolve_tracking_uri()} did not answer within {deadline_s:g} s"
        ) from None
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


def _is_unreachable(exc: Exception) -> bool:
    text = str(exc)
    return any(
        words in text
        for words in ("Max retries exceeded", "Connection refused", "timed out", "Read timed out")
    )


def _unreachable(server: str, exc: Exception) -> str:
    reason = "connection refused" if "refused" in str(exc) else "no answer in time"
    return f"the tracking server {server} is unreachable ({reason}): is it running?"


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
