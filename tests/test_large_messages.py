"""A worker's budget of large messages in flight (gateway/services/large_messages.py): large ones
wait for room, one larger than the budget runs alone, small ones never wait."""

from __future__ import annotations

import threading

import pytest

from gateway.config import load_settings
from gateway.services.large_messages import LARGE_BYTES, LargeMessages

MB = 1 << 20
#: Long enough for a thread that could enter to have entered: the assertion is on entry or not.
SETTLE_S = 0.3


class Holder(threading.Thread):
    """Holds a message of ``size`` bytes in ``budget`` until told to let go."""

    def __init__(self, budget: LargeMessages, size: int):
        super().__init__(daemon=True)
        self.budget, self.size = budget, size
        self.entered, self.release = threading.Event(), threading.Event()

    def run(self) -> None:
        with self.budget.hold(self.size):
            self.entered.set()
            self.release.wait(30)


def start(budget: LargeMessages, size: int) -> Holder:
    holder = Holder(budget, size)
    holder.start()
    return holder


def test_large_messages_wait_for_room_and_small_ones_never_wait() -> None:
    budget = LargeMessages(32 * MB)
    first, second = start(budget, 15 * MB), start(budget, 15 * MB)
    assert first.entered.wait(5) and second.entered.wait(5)  # 30 MB fit in 32
    third = start(budget, 15 * MB)
    assert not third.entered.wait(SETTLE_S)  # 45 MB would not
    small = start(budget, LARGE_BYTES - 1)
    assert small.entered.wait(5)  # under 1 MB: not counted, not held up
    assert budget.in_flight == 30 * MB
    first.release.set()
    assert third.entered.wait(5)
    assert budget.in_flight == 30 * MB
    for holder in (second, third, small):
        holder.release.set()
        holder.join(5)
    assert budget.in_flight == 0


def test_a_message_larger_than_the_budget_runs_alone() -> None:
    budget = LargeMessages(8 * MB)
    huge = start(budget, 20 * MB)
    assert huge.entered.wait(5)  # alone: it runs although it does not fit
    other = start(budget, 2 * MB)
    assert not other.entered.wait(SETTLE_S)
    huge.release.set()
    assert other.entered.wait(5)
    other.release.set()
    other.join(5)
    assert budget.in_flight == 0


def test_a_failing_message_gives_its_room_back() -> None:
    budget = LargeMessages(8 * MB)
    with pytest.raises(ValueError), budget.hold(5 * MB):
        raise ValueError("conversion failed")
    assert budget.in_flight == 0


def test_the_budget_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().worker.large_messages_bytes == 32 * MB
    monkeypatch.setenv("HL7GW_WORKER_LARGE_MESSAGES_MB", "100")
    assert load_settings().worker.large_messages_bytes == 100 * MB
    monkeypatch.setenv("HL7GW_WORKER_LARGE_MESSAGES_MB", "0")
    with pytest.raises(Exception, match="WORKER_LARGE_MESSAGES_MB|worker_large_messages_mb"):
        load_settings()
