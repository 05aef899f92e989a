"""``scanml watch``: the service that scores each new scan as it arrives, exactly once.

It watches a folder (scanners or a transfer job drop files in it) or a
DICOMweb image store (``dicomweb://...``), and gives every new scan what
``scanml score`` gives it, through :func:`scanml.scoring.score` itself: a
row in the scores table, an overlay when flagged, a DICOS Threat Detection
Report, stored back in a DICOMweb store when ``tdr_to`` names one.

Exactly once, across restarts. The scores table is the service's memory:
a scan is new when the table has no row for it, and each scan is scored
by its own call of :func:`scanml.scoring.score`, which commits its row
(crash-safe, see that module) before the next begins. A service killed
at any moment (SIGKILL, power cut) and restarted therefore rescores at
most the scan that was in hand, which replaces the uncommitted work, and
never adds a second row. Reports go to a store only once their row is
committed, through a ledger (:class:`scanml.dicomweb.ReportPublisher`).

Files in a watched folder are taken once their size and modification time
have held still for ``settle_s`` seconds, so a file still being copied is
not read half-written (writers that rename a finished file into place
need no wait at all; names starting with a dot are never taken). A
dual-energy scan's low-energy file ``x.low.dcm`` is read with ``x.dcm``;
one that arrives first waits up to ``partner_wait_s`` for it, and is
scored alone (with a warning) only if it never comes.

SIGTERM (or Ctrl-C) lets the scan in hand finish, then the service exits
with status 0. A store that goes away (refused, timed out, 5xx) is
retried with backoff (1, 2, 4 ... 30 s) and reported, never fatal; a file
that cannot be read becomes an error row like in ``scanml score``.

What it has done is printed as a status line after each scan (and once a
minute when idle) and served as JSON at ``http://127.0.0.1:PORT/status``:
scans scored, flagged and failed, queue length, reports stored, the last
error, latency from arrival to report (p50/p95 over the last 1,000 scans)
and where the time went (fetch, decode, model, write, store).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from scanml.dicomweb import (
    DicomwebError,
    DicomwebStore,
    RemoteInstance,
    ReportPublisher,
    StoreUnavailableError,
    committed_rows,
    is_dicomweb_url,
    is_spooled_partner,
    remove_scored,
)
from scanml.io import SUPPORTED_SUFFIXES, high_energy_file, is_energy_partner

__all__ = ["DEFAULT_STATUS_PORT", "WatchStatus", "watch"]

DEFAULT_STATUS_PORT = 8765
_LATENCY_WINDOW = 1000
_IDLE_STATUS_EVERY_S = 60.0
_MOST_BACKOFF_S = 30.0

log = logging.getLogger(__name__)


@dataclass
class WatchStatus:
    """What the service has done since it started; the status line and endpoint show it."""

    source: str
    out: str
    started_at: float = field(default_factory=time.time)
    scored: int = 0  # scans with a score (this process)
    flagged: int = 0
    failed: int = 0  # error rows (unreadable files)
    queue: int = 0  # scans seen and not yet scored
    reports_stored: int = 0
    store_ok: bool = True
    last_error: str | None = None
    last_error_at: float | None = None
    latencies_s: collections.deque = field(
        default_factory=lambda: collections.deque(maxlen=_LATENCY_WINDOW)
    )
    timings: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("fetch", "decode", "model", "write", "store"), 0.0)
    )
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def error(self, message: str) -> None:
        with self.lock:
            self.last_error, self.last_error_at = message, time.time()
        log.warning("%s", message)

    def as_dict(self) -> dict[str, Any]:
        with self.lock:
            latencies = np.array(self.latencies_s, dtype=float)
            p50, p95 = (
                (float(np.percentile(latencies, q)) for q in (50, 95))
                if latencies.size
                else (None, None)
            )
            return {
                "source": self.source,
                "out": self.out,
                "uptime_s": round(time.time() - self.started_at, 3),
                "scored": self.scored,
                "flagged": self.flagged,
                "failed": self.failed,
                "queue": self.queue,
                "reports_stored": self.reports_stored,
                "store_ok": self.store_ok,
                "last_error": self.last_error,
                "last_error_at": self.last_error_at,
                "latency_p50_s": p50,
                "latency_p95_s": p95,
                "latency_count": int(latencies.size),
                "timings_s": {key: round(value, 3) for key, value in self.timings.items()},
            }

    def line(self) -> str:
        state = self.as_dict()
        latency = (
            f"latency p50 {state['latency_p50_s']:.2f} s p95 {state['latency_p95_s']:.2f} s"
            if state["latency_count"]
            else "latency -"
        )
        store = "" if state["store_ok"] else ", store unreachable"
        return (
            f"watch: scored {state['scored']} (flagged {state['flagged']}, failed {state['failed']}),"
            f" queue {state['queue']}, {latency}{store}, last error: {state['last_error'] or 'none'}"
        )


def watch(
    model_uri: str,
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    overlays: str | os.PathLike[str] | None = None,
    tdr: str | os.PathLike[str] | None = None,
    tdr_to: str | None = None,
    spool: str | os.PathLike[str] | None = None,
    poll_s: float = 1.0,
    settle_s: float = 1.0,
    partner_wait_s: float = 60.0,
    status_port: int | None = DEFAULT_STATUS_PORT,
    device: str = "auto",
    threshold: float | None = None,
    workers: int = 0,
    stop: threading.Event | None = None,
) -> WatchStatus:
    """Score every new scan in ``source`` (a folder or a ``dicomweb://`` URL) until stopped.

    Outputs as :func:`scanml.scoring.score` (``out``, ``overlays``, ``tdr``)
    plus, with ``tdr_to``, each report stored in that DICOMweb store (the
    report files then default to ``<out>.tdr/``). Scans from a store wait
    in ``spool`` (default ``<out>.spool/``) until their row is committed.
    ``poll_s``: seconds between looks at the source. ``partner_wait_s``:
    how long a folder's low-energy file waits for its high-energy file
    before it is scored alone. ``status_port``: the
    status endpoint on 127.0.0.1 (0: any free port; None: none).
    ``workers``: decoding processes per scan (0: in this process). Returns
    when ``stop`` is set, or on SIGTERM/SIGINT when run in the main thread;
    the final status is returned.
    """
    from scanml.models import ModelBundle

    out = Path(os.path.abspath(out))
    stop = stop or threading.Event()
    if tdr_to is not None and tdr is None:
        tdr = out.with_name(f"{out.name}.tdr")
    status = WatchStatus(source=str(source), out=str(out))
    inbox = _inbox_for(
        source,
        out,
        spool=spool,
        settle_s=settle_s,
        partner_wait_s=partner_wait_s,
        overlays=overlays,
        tdr=tdr,
    )
    publisher = ReportPublisher(DicomwebStore(tdr_to), out) if tdr_to is not None else None
    scorer = _OneScanScorer(
        model_uri=model_uri,
        bundle=ModelBundle.load(model_uri),
        out=out,
        overlays=overlays,
        tdr=tdr,
        device=device,
        threshold=threshold,
        workers=workers,
        status=status,
    )
    with _signals_stop(stop), _status_server(status, status_port):
        print(f"watch: {source} -> {out}", file=sys.stderr, flush=True)
        _serve(inbox, scorer, publisher, status, stop, poll_s=poll_s)
    print(status.line(), file=sys.stderr, flush=True)
    return status


# -- the loop -----------------------------------------------------------------------------


def _serve(
    inbox: _FolderInbox | _StoreInbox,
    scorer: _OneScanScorer,
    publisher: ReportPublisher | None,
    status: WatchStatus,
    stop: threading.Event,
    *,
    poll_s: float,
) -> None:
    """Look, score what is new one scan at a time, store reports; back off when something fails."""
    delays = _backoff()
    backlog = publisher is not None  # reports a previous run committed but did not store
    last_line = time.monotonic()
    while not stop.is_set():
        try:
            if backlog:
                _publish(publisher, committed_rows(scorer.out), status)
                backlog = False
            arrivals = inbox.arrivals(scorer.done)
            with status.lock:
                status.queue = len(arrivals)
            for arrival in arrivals:
                if stop.is_set():
                    break
                path = inbox.take(arrival, status)
                if path is None:  # the store would not give this scan: reported, skipped
                    continue
                row_tdr = scorer.score(path)
                if publisher is not None and row_tdr:
                    backlog = True  # until this report is stored
                    _publish(publisher, [row_tdr], status)
                    backlog = False
                inbox.release(path)
                with status.lock:
                    status.latencies_s.append(time.monotonic() - inbox.first_seen.pop(arrival))
                    status.queue = max(0, status.queue - 1)
                print(status.line(), file=sys.stderr, flush=True)
                last_line = time.monotonic()
            with status.lock:
                status.store_ok = True
            delays = _backoff()
            wait_s = poll_s
        except _FatalError:
            raise
        except DicomwebError as exc:
            with status.lock:
                status.store_ok = False
            wait_s = next(delays)
            status.error(f"{exc} (retrying in {wait_s:.0f} s)")
        except Exception as exc:  # a full disk, a bug: reported and retried, never fatal
            wait_s = next(delays)
            status.error(f"{type(exc).__name__}: {exc} (retrying in {wait_s:.0f} s)")
        if time.monotonic() - last_line > _IDLE_STATUS_EVERY_S:
            print(status.line(), file=sys.stderr, flush=True)
            last_line = time.monotonic()
        stop.wait(wait_s)


def _publish(publisher: ReportPublisher, rows_or_reports: list, status: WatchStatus) -> None:
    reports = [row if isinstance(row, str) else row.tdr for row in rows_or_reports]
    started = time.perf_counter()
    stored = publisher.publish(report for report in reports if report)
    with status.lock:
        status.timings["store"] += time.perf_counter() - started
        status.reports_stored += len(stored)


def _backoff() -> Iterator[float]:
    delay = 1.0
    while True:
        yield delay
        delay = min(_MOST_BACKOFF_S, delay * 2)


class _FatalError(RuntimeError):
    """Something a retry cannot fix (another service writes the same table)."""


@dataclass
class _OneScanScorer:
    """One call of :func:`scanml.scoring.score` per scan, with the model loaded once."""

    model_uri: str
    bundle: Any
    out: Path
    overlays: str | os.PathLike[str] | None
    tdr: str | os.PathLike[str] | None
    device: str
    threshold: float | None
    workers: int
    status: WatchStatus
    done: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.done = {row.path for row in committed_rows(self.out)}

    def score(self, path: Path) -> str | None:
        """Score one file (or find it already done); the path of its report, if any."""
        from scanml.scoring import score

        try:
            summary = score(
                self.model_uri,
                [path],
                self.out,
                overlays=self.overlays,
                tdr=self.tdr,
                workers=self.workers,
                device=self.device,
                threshold=self.threshold,
                batch_size=1,
                progress=False,
                bundle=self.bundle,
            )
        except RuntimeError as exc:
            if "another scoring job" in str(exc):
                raise _FatalError(str(exc)) from None
            raise
        self.done.add(str(path))
        row = next((row for row in committed_rows(self.out) if row.path == str(path)), None)
        with self.status.lock:
            self.status.scored += summary.scanned
            self.status.failed += summary.failed
            self.status.flagged += summary.flagged
            for key in ("decode", "model", "write"):
                self.status.timings[key] += summary.timings.get(key, 0.0)
            if row is not None and row.error:
                self.status.last_error, self.status.last_error_at = (
                    f"{Path(row.path).name}: {row.error}",
                    time.time(),
                )
        return row.tdr if row is not None else None


# -- sources ------------------------------------------------------------------------------


def _inbox_for(
    source: str | os.PathLike[str],
    out: Path,
    *,
    spool: str | os.PathLike[str] | None,
    settle_s: float,
    partner_wait_s: float = 60.0,
    overlays: str | os.PathLike[str] | None,
    tdr: str | os.PathLike[str] | None,
) -> _FolderInbox | _StoreInbox:
    if is_dicomweb_url(source):
        spool_dir = Path(os.path.abspath(spool or out.with_name(f"{out.name}.spool")))
        return _StoreInbox(DicomwebStore(str(source)), spool_dir)
    folder = Path(source)
    if not folder.is_dir():
        raise FileNotFoundError(f"{source}: not a folder (watch takes a folder or dicomweb://...)")
    outputs = [Path(os.path.abspath(d)) for d in (overlays, tdr) if d is not None]
    return _FolderInbox(
        Path(os.path.abspath(folder)),
        settle_s=settle_s,
        outputs=outputs,
        partner_wait_s=partner_wait_s,
    )


@dataclass
class _FolderInbox:
    """New scan files in a folder (recursively), once they hold still."""

    folder: Path
    settle_s: float
    outputs: list[Path]
    partner_wait_s: float = 60.0
    first_seen: dict[Any, float] = field(default_factory=dict)
    _sizes: dict[Path, tuple[int, int]] = field(default_factory=dict)
    _partners: set[Path] = field(default_factory=set)
    _high_energy: dict[Path, Path | None] = field(default_factory=dict)

    def arrivals(self, done: set[str]) -> list[Path]:
        now = time.monotonic()
        ready = []
        for path in sorted(self.folder.rglob("*")):
            if (
                path.name.startswith(".")
                or path.suffix.lower() not in SUPPORTED_SUFFIXES
                or str(path) in done
                or path in self._partners
                or any(path.is_relative_to(output) for output in self.outputs)
            ):
                continue
            if is_energy_partner(path):  # x.low.dcm is read with x.dcm, as `scanml score` does
                self._partners.add(path)
                continue
            if self._awaits_high_energy(path, now):
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if not path.is_file():
                continue
            self.first_seen.setdefault(path, now)
            signature = (stat.st_size, stat.st_mtime_ns)
            still = self._sizes.get(path) == signature
            self._sizes[path] = signature
            if still or time.time() - stat.st_mtime >= self.settle_s:
                ready.append(path)
        return ready

    def _awaits_high_energy(self, path: Path, now: float) -> bool:
        """Whether ``path`` is a low-energy file still waiting for its high-energy file.

        A scanner may write ``x.low.dcm`` before ``x.dcm``; scored then, it
        would be a scan of its own. After ``partner_wait_s`` it is scored
        alone, with a warning.
        """
        if path not in self._high_energy:  # a header read, once per file
            self._high_energy[path] = high_energy_file(path)
        high = self._high_energy[path]
        if high is None:
            return False
        waited = now - self.first_seen.setdefault(path, now)
        if waited < self.partner_wait_s:
            return True
        log.warning(
            "%s: its high-energy file %s did not come within %.0f s: scored alone",
            path,
            high.name,
            self.partner_wait_s,
        )
        self._high_energy[path] = None  # warned once
        return False

    def take(self, path: Path, status: WatchStatus) -> Path | None:
        self._sizes.pop(path, None)
        return path

    def release(self, path: Path) -> None:
        """Nothing to do: the folder's files are the agency's."""


@dataclass
class _StoreInbox:
    """New scans in a DICOMweb store, fetched one at a time into a spool folder."""

    store: DicomwebStore
    spool: Path
    first_seen: dict[Any, float] = field(default_factory=dict)
    unfetchable: set[str] = field(default_factory=set)  # refused by the store until restart
    # The low-energy instances of each dual-energy scan, fetched with it (``take``).
    partners: dict[str, list[RemoteInstance]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spool.mkdir(parents=True, exist_ok=True)
        for partial in self.spool.glob(".*.partial"):  # a fetch a kill interrupted
            partial.unlink()

    def arrivals(self, done: set[str]) -> list[RemoteInstance | Path]:
        """Spooled scans a killed run left, then the store's scans without a row."""
        now = time.monotonic()
        done_uids = {Path(path).stem for path in done}
        spooled = []
        for path in sorted(self.spool.glob("*.dcm")):
            if str(path) in done:  # scored, and left behind when storing its report failed
                remove_scored(self.spool, [_Committed(str(path))])
            elif not is_spooled_partner(path):  # <uid>.low.dcm is read with <uid>.dcm
                spooled.append(path)
        waiting = {path.stem for path in spooled}
        self.partners = {}
        remote = []
        for instance in self.store.list_scans():
            if (
                instance.scan_uid in done_uids
                or instance.scan_uid in waiting
                or instance.sop_instance_uid in self.unfetchable
            ):
                continue
            if instance.partner_of is not None:
                self.partners.setdefault(instance.partner_of, []).append(instance)
            else:
                remote.append(instance)
        for arrival in [*spooled, *remote]:
            self.first_seen.setdefault(arrival, now)
        return [*spooled, *remote]

    def take(self, arrival: RemoteInstance | Path, status: WatchStatus) -> Path | None:
        if isinstance(arrival, Path):
            return arrival
        started = time.perf_counter()
        try:
            self._fetch_partners(arrival, status)
            path = self.store.fetch(arrival, self.spool)
        except StoreUnavailableError:
            raise
        except Exception as exc:  # refused or not DICOM: skipped, so it cannot block the queue
            self.unfetchable.add(arrival.sop_instance_uid)
            self.first_seen.pop(arrival, None)
            status.error(f"{arrival.sop_instance_uid}: {exc} (skipped until restart)")
            return None
        with status.lock:
            status.timings["fetch"] += time.perf_counter() - started
        return path

    def _fetch_partners(self, arrival: RemoteInstance, status: WatchStatus) -> None:
        """Spool a dual-energy scan's low-energy instance before the scan: read together.

        One the store will not give is reported, and the scan is scored without it.
        """
        for partner in self.partners.get(arrival.sop_instance_uid, []):
            try:
                self.store.fetch(partner, self.spool)
            except StoreUnavailableError:
                raise
            except Exception as exc:
                status.error(
                    f"{partner.sop_instance_uid}: {exc} (the low-energy image of "
                    f"{arrival.sop_instance_uid}, scored without it)"
                )

    def release(self, path: Path) -> None:
        """The row is committed and its report stored: the store keeps the original."""
        remove_scored(self.spool, [_Committed(str(path))])


@dataclass(frozen=True)
class _Committed:
    path: str


# -- signals and the status endpoint ------------------------------------------------------


@contextlib.contextmanager
def _signals_stop(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop`` (the scan in hand finishes); handlers restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum: int, _frame: Any) -> None:
        print(
            f"watch: {signal.Signals(signum).name}, finishing the scan in hand",
            file=sys.stderr,
            flush=True,
        )
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _status_server(status: WatchStatus, port: int | None) -> Iterator[int | None]:
    """Serve ``status`` as JSON on 127.0.0.1:``port`` in a thread, for the life of the block."""
    if port is None:
        yield None
        return

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/", "/status"):
                self.send_error(404, "try /status")
                return
            body = json.dumps(status.as_dict(), indent=1).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # the status line says enough
            pass

    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    except OSError as exc:
        raise OSError(
            f"status endpoint: cannot listen on 127.0.0.1:{port}: {exc.strerror}"
        ) from None
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="watch-status", daemon=True)
    thread.start()
    print(
        f"watch: status on http://127.0.0.1:{server.server_port}/status",
        file=sys.stderr,
        flush=True,
    )
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
