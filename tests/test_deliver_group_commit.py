"""GroupCommit: items from many threads share a batch; each thread gets its own result or exception."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from gateway.deliver.group_commit import GroupCommit


class Recorder:
    """A batch function that records batch sizes; the first call waits for ``gate``."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, items: list[int]) -> Sequence[int | BaseException]:
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(items)
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]


def _submit_all(commit: GroupCommit[int, int], items: list[int]) -> dict[int, object]:
    results: dict[int, object] = {}

    def run(item: int) -> None:
        try:
            results[item] = commit.submit(item)
        except Exception as exc:  # noqa: BLE001 - compared below
            results[item] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return results


def test_waiting_items_share_one_batch_and_get_their_own_outcome() -> None:
    recorder = Recorder()
    commit: GroupCommit[int, int] = GroupCommit(recorder, max_batch=50)
    first = threading.Thread(target=commit.submit, args=(0,))
    first.start()
    assert recorder.entered.wait(5)  # the writer is busy with item 0; the rest queue up

    done: dict[int, object] = {}
    waiter = threading.Thread(target=lambda: done.update(_submit_all(commit, list(range(1, 21)))))
    waiter.start()
    while commit._queue.qsize() < 20:  # noqa: SLF001 - wait until all are queued
        threading.Event().wait(0.01)
    recorder.gate.set()
    waiter.join(10)
    first.join(10)

    assert recorder.batches[0] == [0]
    assert sorted(recorder.batches[1]) == list(range(1, 21))  # one batch for everything that waited
    assert done[4] == 40
    assert isinstance(done[3], ValueError) and str(done[3]) == "odd 3"
    commit.close()


def test_batches_are_capped() -> None:
    recorder = Recorder()
    recorder.gate.set()
    commit: GroupCommit[int, int] = GroupCommit(recorder, max_batch=3)
    results = _submit_all(commit, [2 * i for i in range(12)])
    assert results == {2 * i: 20 * i for i in range(12)}
    assert max(len(batch) for batch in recorder.batches) <= 3
    commit.close()


def test_a_failing_batch_fails_its_items_and_the_writer_goes_on() -> None:
    calls: list[list[int]] = []

    def flaky(items: list[int]) -> list[int]:
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("database went away")
        return items

    commit: GroupCommit[int, int] = GroupCommit(flaky)
    with pytest.raises(RuntimeError, match="database went away"):
        commit.submit(1)
    assert commit.submit(2) == 2
    commit.close()


def test_close_finishes_queued_items_and_a_later_submit_restarts_the_writer() -> None:
    commit: GroupCommit[int, int] = GroupCommit(lambda items: items)
    assert commit.submit(1) == 1
    commit.close()
    assert commit.submit(5) == 5
    commit.close()


def test_the_writer_keeps_no_item_of_a_finished_batch() -> None:
    """While it waits for the next batch, the writer thread holds nothing of the last one (a large
    message's bundle would otherwise stay in memory until the next message comes)."""
    import gc
    import weakref

    class Item:
        pass

    commit: GroupCommit[Item, int] = GroupCommit(lambda items: [1] * len(items), name="test-keeps-nothing")
    try:
        item = Item()
        gone = weakref.ref(item)
        assert commit.submit(item) == 1
        del item
        gc.collect()
        assert gone() is None
    finally:
        commit.close()
