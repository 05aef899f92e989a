"""Training on several processes: ``torchrun --nproc-per-node N -m scanml train`` and ``--nproc N``.

:func:`setup` reads the environment torchrun gives each process (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``) and joins the process group: gloo on the
CPU, NCCL on GPUs (one per process). Without torchrun it returns a world of
one, and every helper below is then the plain single-process call, so
:func:`scanml.train.train` reads the same either way.

What each rank does, and why:

- tiles: each rank cuts tiles from its own share of the training scans
  (:class:`~scanml.data.TileDataset` shards by rank); DistributedDataParallel
  averages the gradients, so the ranks keep identical weights. Ranks may
  hold a scan more or fewer than each other: :meth:`Distributed.join` lets
  one that runs out of batches first wait without hanging the others;
- validation and hard-negative mining: each rank scores a share of the
  scans and the results are gathered on every rank, so every rank computes
  the same metrics, takes the same decisions (best epoch, early stopping)
  and samples from the same hard negatives;
- tracking, checkpoints, the final model: rank 0 only, into one MLflow run
  whose id every rank learns (:meth:`Distributed.from_main`). A resumed run
  reads rank 0's ``last.pt`` on every rank.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from scanml.tracking import Tracker

__all__ = ["Distributed", "SilentTracker", "launch", "setup"]

T = TypeVar("T")

# A rank that waits on the others (rank 0 logging a model, a slow validation
# share) must not be declared dead too soon.
_TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the training world."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process on a node; the CPU stays the CPU."""
        if self.active and device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def wrap(self, network: nn.Module, device: torch.device) -> nn.Module:
        """The module the optimizer steps through: DistributedDataParallel when there are ranks."""
        if not self.active:
            return network
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(network, device_ids=ids)

    def join(self, trainable: nn.Module) -> contextlib.AbstractContextManager:
        """Uneven shares of tiles: a rank out of batches shadows the others' gradient averaging."""
        if not self.active:
            return contextlib.nullcontext()
        from torch.distributed.algorithms.join import Join

        return Join([trainable])

    def from_main(self, compute: Callable[[], T]) -> T:
        """``compute()`` on rank 0 only; every rank gets its result (picklable)."""
        if not self.active:
            return compute()
        box = [compute() if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.active:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items`` (every world_size-th, from its rank)."""
        return list(items[self.rank :: self.world_size])

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


class SilentTracker(Tracker):
    """The tracker of ranks other than 0: no client, no run, every call a no-op.

    Not even a client is made: opening a sqlite store creates its tables,
    and two processes doing that at once fail with "database is locked".
    """

    def __post_init__(self) -> None:
        self._client = None  # type: ignore[assignment]


def setup(device: torch.device) -> Distributed:
    """Join the process group torchrun describes in the environment, or a world of one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=_TIMEOUT)
    return Distributed(rank, world_size, local_rank)


def validate_across(
    world: Distributed,
    validate: Callable[..., tuple[Any, list]],
    bundle: Any,
    scans: Sequence[Any],
    **kwargs: Any,
) -> tuple[Any, list]:
    """``validate(bundle, scans)`` with the scans shared out and the predictions gathered.

    Every rank returns the metrics of all the scans, computed from the same
    predictions in the same order as one process would.
    """
    if not world.active:
        return validate(bundle, scans, **kwargs)
    from scanml.metrics import ScanOutcome, compute_metrics

    indices = world.share(range(len(scans)))
    _, mine = validate(bundle, [scans[i] for i in indices], **kwargs)
    gathered = world.gather(
        [(i, prediction) for i, (_, prediction) in zip(indices, mine, strict=True)]
    )
    by_index = dict(pair for share in gathered for pair in share)
    predictions = [(scans[i], by_index[i]) for i in range(len(scans))]
    outcomes = [ScanOutcome.of(item.record, prediction) for item, prediction in predictions]
    return compute_metrics(outcomes), predictions


def merge_across(world: Distributed, mined: dict[str, T]) -> dict[str, T]:
    """Every rank's mined hard negatives (disjoint scans), on every rank."""
    merged: dict[str, T] = {}
    for share in world.gather(mined):
        merged.update(share)
    return merged


def launch(nproc: int, argv: Sequence[str]) -> int:
    """``scanml train --nproc N ...``: the same command under torchrun, N processes on this machine."""
    if nproc < 1:
        raise ValueError(f"--nproc {nproc}: must be 1 or more")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "scanml",
        *argv,
    ]
    environment = dict(os.environ)
    # One intra-op thread pool per process, sized so the processes share the cores.
    cores = os.cpu_count() or 1
    environment.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
    # One machine: gloo talks over loopback, whatever the host name resolves to.
    environment.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with _forward_signals() as process_box:
        process = subprocess.Popen(command, env=environment)
        process_box.append(process)
        return process.wait()


@contextlib.contextmanager
def _forward_signals() -> Iterator[list[subprocess.Popen]]:
    """Ctrl-C reaches torchrun (which stops its workers) through the terminal already."""
    box: list[subprocess.Popen] = []
    try:
        yield box
    except KeyboardInterrupt:
        for process in box:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
        raise
