"""Scans from a DICOMweb image store, and Threat Detection Reports back to one.

In a port, scanners send their scans to a central image store; Orthanc with
its DICOMweb plugin is the open reference. scanml talks to it through the
three DICOMweb services (with the ``dicomweb-client`` library): QIDO-RS to
list the scans, WADO-RS to fetch one, STOW-RS to store a report.

An image store is named by a URL of its own, so that ``--input`` can hold
either a path or a store::

    dicomweb://HOST[:PORT]/PATH[?QUERY]     (HTTP; dicomwebs:// for HTTPS)
    dicomweb://USER:PASSWORD@HOST:PORT/PATH (HTTP basic authentication)

``PATH`` is the DICOMweb root (``/dicom-web`` for Orthanc); ``QUERY`` holds
QIDO-RS matching keys that narrow the scans, e.g. ``?Modality=DX`` or
``?StudyDate=20260105``. Threat Detection Reports (ours, or another
detector's) stored in the same place are never taken for scans.

:func:`score_dicomweb` is ``scanml score`` over a store: the scans the
table does not hold yet are fetched into a spool folder, scored by
:func:`scanml.scoring.score` (same table, overlays and reports, same crash
safety), their reports stored back, and the spooled copies removed. A
report is stored only once its row is committed, and every stored report
is entered in a ledger beside the table (``<out>.stored.txt``), so a job
killed at any moment and rerun neither scores a scan twice nor leaves a
second report in the store (storing a report again is harmless: it keeps
its SOP Instance UID, and the store keeps one copy).
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
import requests
from dicomweb_client import DICOMwebClient

from scanml.fsutil import write_atomically
from scanml.io.dicos import ENERGY_IMAGE_TYPES, energy_partner_paths
from scanml.scores_table import read_table
from scanml.tdr import TDR_SOP_CLASS_UID

if TYPE_CHECKING:
    from scanml.scoring import ScoreSummary

__all__ = [
    "DicomwebError",
    "DicomwebLocation",
    "DicomwebStore",
    "RemoteInstance",
    "ReportPublisher",
    "StoreUnavailableError",
    "is_dicomweb_url",
    "pair_energies",
    "parse_dicomweb_url",
    "score_dicomweb",
]

SCHEMES = {"dicomweb": "http", "dicomwebs": "https"}
# QIDO-RS page size: Orthanc and most stores answer a thousand instances quickly.
_PAGE = 1000
# Connect and read timeouts of every request: a store that hangs is a store that is down.
_TIMEOUT_S = (5.0, 60.0)
_UID = "0020000D", "0020000E", "00080018", "00080016"  # study, series, instance, SOP class
_IMAGE_TYPE = "00080008"  # value 2 names the energy of one file of a dual-energy scan


class DicomwebError(RuntimeError):
    """The store answered, but refused or garbled what was asked (one line: why)."""


class StoreUnavailableError(DicomwebError):
    """The store cannot be reached (refused, timed out, or a 5xx): worth retrying later."""


@dataclass(frozen=True)
class DicomwebLocation:
    """A parsed ``dicomweb://`` URL."""

    url: str  # the DICOMweb root over http(s), without credentials
    filters: dict[str, str] = field(default_factory=dict)  # QIDO-RS matching keys
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        query = f"?{urllib.parse.urlencode(self.filters)}" if self.filters else ""
        return f"{self.url}{query}"


@dataclass(frozen=True)
class RemoteInstance:
    """One instance in the store, by its UIDs.

    A dual-energy scan is two instances of one series, told apart by Image
    Type (``energy``). Its low-energy instance names the high-energy one it
    is read with (``partner_of``): it is spooled beside it as
    ``<high SOP Instance UID>.low.dcm``, the name :func:`scanml.io.read_scan`
    looks for, and is never a scan of its own.
    """

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    energy: str | None = None  # "HIGH ENERGY" / "LOW ENERGY"; None: single energy or unsaid
    partner_of: str | None = None

    @property
    def scan_uid(self) -> str:
        """The scan this instance belongs to: the high-energy instance's UID for a partner."""
        return self.partner_of or self.sop_instance_uid

    @property
    def spool_name(self) -> str:
        if self.partner_of:
            return spooled_partner(Path(f"{self.partner_of}.dcm")).name
        return f"{self.sop_instance_uid}.dcm"


def is_dicomweb_url(text: str | os.PathLike[str]) -> bool:
    return isinstance(text, str) and text.split("://", 1)[0].lower() in SCHEMES and "://" in text


def parse_dicomweb_url(text: str) -> DicomwebLocation:
    """Parse ``dicomweb://HOST[:PORT]/PATH[?QUERY]``; ValueError saying what is wrong."""
    parts = urllib.parse.urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"{text}: not a DICOMweb URL (expected dicomweb://HOST[:PORT]/PATH)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{text}: the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"{text}: no host (expected dicomweb://HOST[:PORT]/PATH)")
    filters: dict[str, str] = {}
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if not key or not value:
            raise ValueError(f"{text}: query item {key or '?'}={value} needs a key and a value")
        filters[key] = value
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = f"{host}:{port}" if port else host
    return DicomwebLocation(
        url=urllib.parse.urlunsplit((SCHEMES[scheme], netloc, parts.path.rstrip("/"), "", "")),
        filters=filters,
        username=urllib.parse.unquote(parts.username) if parts.username else None,
        password=urllib.parse.unquote(parts.password) if parts.password else None,
    )


class DicomwebStore:
    """QIDO-RS, WADO-RS and STOW-RS against one store; errors become DicomwebError."""

    def __init__(self, location: DicomwebLocation | str) -> None:
        if isinstance(location, str):
            location = parse_dicomweb_url(location)
        self.location = location
        session = requests.Session()
        if location.username is not None:
            session.auth = (location.username, location.password or "")
        self._client = DICOMwebClient(location.url, session=session, timeout=_TIMEOUT_S)
        # Retries are the caller's (watch backs off); the client's own would block for minutes.
        self._client.set_http_retry_params(retry=False)

    def list_scans(self) -> list[RemoteInstance]:
        """Every instance matching the URL's query, reports excluded, in the store's order.

        A dual-energy scan's low-energy instance is listed with ``partner_of``
        set (:func:`pair_energies`): fetch it with its scan, never score it alone.
        """
        found: list[RemoteInstance] = []
        offset = 0
        while True:
            page = self._call(
                "list scans",
                self._client.search_for_instances,
                search_filters=dict(self.location.filters),
                fields=[_IMAGE_TYPE],
                offset=offset,
                limit=_PAGE,
            )
            for attributes in page:
                instance = _remote_instance(attributes)
                if instance is not None and instance.sop_class_uid != TDR_SOP_CLASS_UID:
                    found.append(instance)
            if len(page) < _PAGE:
                return pair_energies(found)
            offset += len(page)

    def fetch(self, instance: RemoteInstance, folder: Path) -> Path:
        """Fetch an instance in its stored transfer syntax into ``folder/<spool_name>``
        (``<SOP Instance UID>.dcm``, or ``<high-energy UID>.low.dcm`` for a partner).

        The file appears whole or not at all (written beside, flushed, renamed).
        """
        dataset = self._call(
            f"fetch {instance.sop_instance_uid}",
            self._client.retrieve_instance,
            instance.study_uid,
            instance.series_uid,
            instance.sop_instance_uid,
            media_types=(("application/dicom", "*"),),
        )
        path = folder / instance.spool_name
        return write_atomically(
            path, lambda partial: dataset.save_as(partial, enforce_file_format=True)
        )

    def store(self, path: Path) -> str:
        """STOW-RS one DICOM file (a report); its SOP Instance UID once the store has it."""
        dataset = pydicom.dcmread(path)
        answer = self._call(f"store {path.name}", self._client.store_instances, [dataset])
        failed = answer.get("FailedSOPSequence") or []
        if failed:
            reason = failed[0].get("FailureReason")
            raise DicomwebError(
                f"{self.location.url} refused {path.name} (DICOM failure reason {reason})"
            )
        return str(dataset.SOPInstanceUID)

    def _call(self, what: str, method, *args, **kwargs):
        try:
            return method(*args, **kwargs)
        except _INTERRUPTED as exc:
            raise StoreUnavailableError(
                f"cannot reach {self.location.url} to {what}: {_first_line(exc)}"
            ) from None
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            kind = StoreUnavailableError if status is None or status >= 500 else DicomwebError
            raise kind(f"{self.location.url} answered {status} to {what}") from None


# A store that cannot be reached, or that went away part-way through an
# answer (requests raises ChunkedEncodingError for a body cut short, read
# whole or streamed): try again later, never "this instance is unfetchable".
_INTERRUPTED = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


class ReportPublisher:
    """Stores the reports of committed rows in a DICOMweb store, each once, across restarts.

    The ledger ``<out>.stored.txt`` lists, one per line, the report files
    already stored, with their modification time (a rescored scan writes a
    new report at the same path, which is then stored again).
    """

    def __init__(self, store: DicomwebStore, out: Path) -> None:
        self.store = store
        self.ledger = out.with_name(f"{out.name}.stored.txt")
        self._stored: set[str] = set()
        if self.ledger.exists():
            self._stored = set(self.ledger.read_text().splitlines())

    def pending(self, reports: Iterable[str]) -> list[Path]:
        """The report files among ``reports`` that are not in the store yet."""
        return [Path(report) for report in reports if _ledger_key(Path(report)) not in self._stored]

    def publish(self, reports: Iterable[str]) -> list[str]:
        """Store every pending report; the scan ids (report file stems) stored by this call.

        Stops at the first error (the store is down, or refused one):
        the rest stay pending for the next call.
        """
        stored = []
        for report in self.pending(reports):
            key = _ledger_key(report)
            if key is None:  # the report file went missing: nothing to send
                continue
            self.store.store(report)
            with self.ledger.open("a") as ledger:
                ledger.write(key + "\n")
                ledger.flush()
                os.fsync(ledger.fileno())
            self._stored.add(key)
            stored.append(report.stem)
        return stored


@dataclass(frozen=True)
class DicomwebSummary:
    """What :func:`score_dicomweb` did: the scoring job's summary plus the store's side."""

    scoring: ScoreSummary
    fetched: int
    reports_stored: int

    def __str__(self) -> str:
        return f"{self.scoring}; fetched {self.fetched}, stored {self.reports_stored} reports"


def score_dicomweb(
    model_uri: str,
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    tdr_to: str | None = None,
    overlays: str | os.PathLike[str] | None = None,
    tdr: str | os.PathLike[str] | None = None,
    spool: str | os.PathLike[str] | None = None,
    keep_spool: bool = False,
    workers: int | None = None,
    device: str = "auto",
    threshold: float | None = None,
    progress: bool = True,
) -> DicomwebSummary:
    """``scanml score`` with a store as input, as output for the reports, or both.

    ``source``: a ``dicomweb://`` URL or anything :func:`scanml.scoring.score`
    takes. Scans from a store are fetched into ``spool`` (default
    ``<out>.spool/``) and removed once their row is committed, unless
    ``keep_spool``. ``tdr_to``: a ``dicomweb://`` URL to store each report
    in; the report files are then written to ``tdr`` (default
    ``<out>.tdr/``). Raises StoreUnavailableError when a store cannot be
    reached, DicomwebError when it refuses; rerun, the job carries on where
    it stopped.
    """
    from scanml.scoring import score

    out = Path(os.path.abspath(out))
    if tdr_to is not None and tdr is None:
        tdr = out.with_name(f"{out.name}.tdr")
    publisher = ReportPublisher(DicomwebStore(tdr_to), out) if tdr_to is not None else None
    fetched = 0
    spool_dir = None
    if is_dicomweb_url(source):
        spool_dir = Path(os.path.abspath(spool or out.with_name(f"{out.name}.spool")))
        inbox = DicomwebStore(str(source))
        scored = {Path(row.path).stem for row in committed_rows(out)}
        for instance in inbox.list_scans():
            if instance.scan_uid in scored or (spool_dir / instance.spool_name).exists():
                continue
            inbox.fetch(instance, spool_dir)
            fetched += instance.partner_of is None
        spool_dir.mkdir(parents=True, exist_ok=True)
        source = spool_dir
    summary = score(
        model_uri,
        source,
        out,
        overlays=overlays,
        tdr=tdr,
        workers=workers,
        device=device,
        threshold=threshold,
        progress=progress,
    )
    rows = committed_rows(out)
    stored = publisher.publish(row.tdr for row in rows if row.tdr) if publisher else []
    if spool_dir is not None and not keep_spool:
        remove_scored(spool_dir, rows)
    result = DicomwebSummary(summary, fetched=fetched, reports_stored=len(stored))
    if progress and (fetched or stored):
        print(f"fetched {fetched} scans, stored {len(stored)} reports", flush=True)
    return result


@dataclass(frozen=True)
class CommittedRow:
    scan_id: str
    path: str
    tdr: str | None
    error: str | None


def committed_rows(out: Path) -> list[CommittedRow]:
    """The rows of the merged scores table ``out`` (none when it does not exist yet)."""
    if not out.exists():
        return []
    table = read_table(out, columns=["scan_id", "path", "tdr", "error"]).to_pydict()
    return [
        CommittedRow(scan_id, path, tdr, error)
        for scan_id, path, tdr, error in zip(
            table["scan_id"], table["path"], table["tdr"], table["error"], strict=True
        )
    ]


def remove_scored(spool: Path, rows: Iterable[CommittedRow]) -> None:
    """Remove spooled scans whose row is committed, with their low-energy file: the store
    keeps the originals."""
    for row in rows:
        path = Path(row.path)
        if path.parent == spool:
            path.unlink(missing_ok=True)
            spooled_partner(path).unlink(missing_ok=True)


def spooled_partner(path: Path) -> Path:
    """Where the spool keeps the low-energy instance of the scan spooled at ``path``."""
    return energy_partner_paths(path, ["high", "low"])[1]


def is_spooled_partner(path: Path) -> bool:
    """Whether a spooled file is a low-energy instance, read with its scan's file."""
    return path.stem.endswith(".low")


def pair_energies(instances: list[RemoteInstance]) -> list[RemoteInstance]:
    """``instances`` with each low-energy one pointed at the high-energy instance of its
    series (``partner_of``), where the series holds exactly one; a low-energy instance
    without one stays a scan of its own (as ``x.low.dcm`` without ``x.dcm`` does)."""
    others: dict[tuple[str, str], list[str]] = {}
    for instance in instances:
        if instance.energy != "LOW ENERGY":
            series = (instance.study_uid, instance.series_uid)
            others.setdefault(series, []).append(instance.sop_instance_uid)
    paired = []
    for instance in instances:
        highs = others.get((instance.study_uid, instance.series_uid), [])
        if instance.energy == "LOW ENERGY" and len(highs) == 1:
            instance = replace(instance, partner_of=highs[0])
        paired.append(instance)
    return paired


def _remote_instance(attributes: dict) -> RemoteInstance | None:
    """UIDs (and the energy) from a QIDO-RS result in DICOM JSON; None when a UID is missing."""
    values = [(attributes.get(tag) or {}).get("Value") or [None] for tag in _UID]
    study, series, instance, sop_class = (value[0] for value in values)
    if not (study and series and instance):
        return None
    image_type = [
        str(v).strip().upper() for v in (attributes.get(_IMAGE_TYPE) or {}).get("Value") or []
    ]
    energy = image_type[1] if len(image_type) >= 2 and image_type[1] in ENERGY_IMAGE_TYPES else None
    return RemoteInstance(str(study), str(series), str(instance), str(sop_class or ""), energy)


def _ledger_key(report: Path) -> str | None:
    try:
        return f"{report}\t{report.stat().st_mtime_ns}"
    except FileNotFoundError:
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
