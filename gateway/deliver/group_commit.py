"""Group commit: many threads' writes, one database transaction.

Worker threads hand their item to ``submit`` and wait. One writer thread takes every item queued
since its last commit (at most ``max_batch``), applies them together and wakes each thread with
its own result or exception. Under load the batches grow by themselves; a lone item goes at once.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")
#: Applies a batch; returns one result or exception per item, in order.
BatchFunction = Callable[[list[Item]], Sequence["Result | BaseException"]]

_STOP = object()


class GroupCommit(Generic[Item, Result]):
    def __init__(self, apply: BatchFunction[Item, Result], max_batch: int = 64, name: str = "group-commit"):
        self._apply = apply
        self._max_batch = max_batch
        self._name = name
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.items = 0

    def submit(self, item: Item) -> Result:
        """Apply ``item`` in the next batch and return its result (or raise its exception)."""
        future: Future[Result] = Future()
        self._ensure_running()
        self._queue.put((item, future))
        return future.result()

    def close(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then stop the writer thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout)

    def _ensure_running(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            batch, stop = self._take_batch()
            if batch:
                self._commit(batch)
            # Nothing of this batch (whole messages, their bundles) stays referenced from this
            # thread's frame while it waits for the next one.
            del batch
            if stop:
                return

    def _take_batch(self) -> tuple[list[tuple[Item, Future[Result]]], bool]:
        """The next batch (waiting for its first item), and whether close() was called."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch = [first]
        while len(batch) < self._max_batch:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is _STOP:
                return batch, True  # type: ignore[return-value]
            batch.append(nxt)
        return batch, False  # type: ignore[return-value]

    def _commit(self, batch: list[tuple[Item, Future[Result]]]) -> None:
        try:
            outcomes = self._apply([item for item, _ in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"batch function returned {len(outcomes)} results for {len(batch)} items")
        except BaseException as exc:  # noqa: BLE001 - every waiter gets the failure
            log.exception("%s: batch of %d failed", self._name, len(batch))
            outcomes = [exc] * len(batch)
        self.batches += 1
        self.items += len(batch)
        for (_, future), outcome in zip(batch, outcomes):
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
