"""Worker processes that may die: each task's crash, kill or hang becomes that task's result.

A decoder fed hostile files can do worse than raise: a compiled codec can
abort or segfault, the kernel's OOM killer can take the process, a loop can
hang. In a pool such as :class:`concurrent.futures.ProcessPoolExecutor` one
dead worker breaks every pending task; here each worker takes one task at
a time over its own pipe, so the parent knows which task a dead worker
held: that task gets ``on_failure(task, reason)`` as its result, a fresh
worker takes its place and the rest carry on.

Results travel through :mod:`multiprocessing`'s pickler, into which
:mod:`torch.multiprocessing` registers its reductions, so torch tensors in a
result cross through shared memory, as they do from a DataLoader's workers.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Generic, TypeVar

import torch.multiprocessing  # noqa: F401  (registers tensor reductions for the pipes)

__all__ = ["guarded_map"]

Task = TypeVar("Task")
Result = TypeVar("Result")


def guarded_map(
    function: Callable[[Task], Result],
    tasks: Iterable[Task],
    *,
    workers: int,
    on_failure: Callable[[Task, str], Result],
    timeout_s: float | None = None,
) -> Iterator[Result]:
    """``function(task)`` for every task in ``workers`` processes, yielded as they finish.

    ``function`` should catch its own exceptions; one that escapes, a
    worker that dies (signal, exit, out of memory) or a task running past
    ``timeout_s`` yields ``on_failure(task, reason)`` instead. The order of
    results is the order of completion.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    pending = list(tasks)[::-1]
    pool: list[_Worker[Task]] = []
    context = multiprocessing.get_context("fork")
    try:
        while pending or any(worker.task is not None for worker in pool):
            while pending and len(pool) < workers:
                pool.append(_Worker.start(context, function, pool))
            for index, worker in enumerate(pool):
                if worker.task is None and not worker.process.is_alive():
                    worker.kill()  # it answered, then died: a panic's aftermath
                    pool[index] = _Worker.start(context, function, pool)
            for worker in pool:
                if worker.task is None and pending:
                    worker.give(pending.pop())
            yield from _collect(pool, function, on_failure, timeout_s, context)
    finally:
        for worker in pool:
            worker.stop()


def _collect(
    pool: list[_Worker[Any]],
    function: Callable[[Any], Any],
    on_failure: Callable[[Any, str], Any],
    timeout_s: float | None,
    context: Any,
) -> Iterator[Any]:
    """Wait for the next results or deaths; replace dead or hung workers."""
    busy = [worker for worker in pool if worker.task is not None]
    deadline = min(
        (worker.started + timeout_s for worker in busy if timeout_s is not None), default=None
    )
    wait_s = None if deadline is None else max(0.0, deadline - time.monotonic())
    ready = set(wait([w.connection for w in busy] + [w.process.sentinel for w in busy], wait_s))
    for index, worker in enumerate(pool):
        if worker.task is None:
            continue
        task = worker.task
        if worker.connection in ready:
            try:
                ok, value = worker.connection.recv()
            except (EOFError, OSError):
                ok, value = None, None  # it died while answering
            if ok is not None:
                worker.task = None
                yield value if ok else on_failure(task, value)
                continue
        elif worker.process.sentinel not in ready:
            if timeout_s is None or time.monotonic() - worker.started < timeout_s:
                continue
            reason = f"decoding took longer than {timeout_s:g} s: its process was stopped"
            worker.kill()
            pool[index] = _Worker.start(context, function, pool)
            yield on_failure(task, reason)
            continue
        worker.kill()
        reason = _death(worker.process.exitcode)
        pool[index] = _Worker.start(context, function, pool)
        yield on_failure(task, reason)


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (the kernel's out-of-memory killer sends it)" if name == "SIGKILL" else ""
        return f"the decoding process died of {name}{hint}"
    return f"the decoding process exited with status {exitcode}"


@dataclass
class _Worker(Generic[Task]):
    process: Any
    connection: Connection
    task: Task | None = None
    started: float = 0.0

    @classmethod
    def start(
        cls, context: Any, function: Callable[[Task], Any], pool: list[_Worker[Any]]
    ) -> _Worker[Task]:
        """A new worker; it closes the parent's ends of every pipe it inherits (its own too),
        so that it sees end-of-file, and exits, as soon as the parent is gone."""
        parent_end, child_end = context.Pipe()
        inherited = [parent_end, *(worker.connection for worker in pool)]
        process = context.Process(target=_serve, args=(child_end, function, inherited), daemon=True)
        process.start()
        child_end.close()
        return cls(process, parent_end)

    def give(self, task: Task) -> None:
        self.task, self.started = task, time.monotonic()
        with contextlib.suppress(OSError):  # died just now: its sentinel reports it next
            self.connection.send(task)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.join()
        self.connection.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.send(None)
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.kill()
        self.connection.close()


def _serve(
    connection: Connection, function: Callable[[Any], Any], inherited: list[Connection]
) -> None:
    """A worker's life: one task at a time until told to stop or the parent is gone."""
    import torch

    for parent_end in inherited:
        parent_end.close()

    torch.set_num_threads(1)  # as a DataLoader worker: the cores are shared
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    while True:
        try:
            task = connection.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            answer = (True, function(task))
        except Exception as exc:
            answer = (False, f"{type(exc).__name__}: {exc}")
        except BaseException as exc:  # a compiled library's panic: report it, then stop
            with contextlib.suppress(OSError):
                connection.send((False, f"{type(exc).__name__}: {exc}"))
            os._exit(70)
        try:
            connection.send(answer)
        except (BrokenPipeError, OSError):
            return
