"""Commit lanes: a second Redis connection is used only when the first holds a Redis read's worth,
each lane keeps its order, and sequence numbers stay gapless across lanes."""

from __future__ import annotations

import asyncio

from gateway.queue.entry import Received
from gateway.queue.intake import LANE_BYTES, Intake, Receipt
from tests.support.queue import queued

RAW = b"MSH|^~\\&|App|Fac|||20240101||ADT^A01|%d|P|2.5\rPID|1||" + b"x" * 900 + b"\r"


def test_lanes_fill_in_order_and_keep_their_order(redis_url: str, redis_namespace: str) -> None:
    async def scenario() -> tuple[list[int], dict[int, list[Receipt]]]:
        intake = Intake(redis_url, namespace=redis_namespace, lanes=3)
        await intake.start()
        picked: list[int] = []
        receipts: dict[int, list[Receipt]] = {}
        futures = []
        try:
            # All queued in one event-loop turn, nothing sent yet: the lanes fill one after the other.
            for n in range(60):
                lane = intake.pick_lane()
                picked.append(lane)
                future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()

                def done(receipt: Receipt | None, error: BaseException | None, f=future, lane=lane) -> None:
                    assert error is None and receipt is not None
                    receipts.setdefault(lane, []).append(receipt)
                    f.set_result(receipt)

                intake.receive(Received(RAW % n, "App|Fac", str(n), "peer"), done, lane)
                futures.append(future)
            await asyncio.gather(*futures)
        finally:
            await intake.close()
        return picked, receipts

    picked, receipts = asyncio.run(scenario())
    # The first lane until it holds 16 KiB (an encoded message is less than three times its bytes),
    # then the second, then the third; then whichever holds least.
    assert picked[: LANE_BYTES // (3 * len(RAW))] == [0] * (LANE_BYTES // (3 * len(RAW)))
    filling = picked[: picked.index(2)]
    assert filling == sorted(filling) and set(picked) == {0, 1, 2}
    for lane, got in receipts.items():
        seqs = [r.seq for r in got]
        assert seqs == sorted(seqs), lane  # a lane's messages are numbered in the order queued
    assert sorted(r.seq for got in receipts.values() for r in got) == list(range(1, 61))
    assert len(queued(redis_url, redis_namespace)) == 60
