"""Redis killed (SIGKILL) in the middle of a stream and started again: no message got AA without
being stored, every AA'd message is there after the restart, and the listener recovers by itself."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from pathlib import Path

from gateway.mllp.framing import encode_frame
from gateway.services.embedded_redis import EmbeddedRedis
from tests.support.mllp import RawClient, adt, listening
from tests.support.queue import queued

CONNECTIONS = 5


def test_kill_redis_mid_stream_and_restart(tmp_path: Path) -> None:
    redis_server = EmbeddedRedis(tmp_path / "redis")  # appendonly yes, appendfsync always
    url = redis_server.start()
    outcomes: dict[str, list[str]] = {}  # control id -> every MSA-1 it got, in order
    accepted_after_restart: list[str] = []
    restarted, finished = threading.Event(), threading.Event()

    def restart() -> None:
        redis_server.start()
        restarted.set()
        finished.wait(120)

    restarter = threading.Thread(target=restart, daemon=True)

    async def sender(port: int, n: int, stop: asyncio.Event) -> None:
        client = await RawClient.connect(port)
        give_up = asyncio.get_running_loop().time() + 30
        i = 0
        while not stop.is_set():
            control_id = f"K{n}-{i}"
            while asyncio.get_running_loop().time() < give_up:  # a real sender resends until it gets AA
                await client.send(encode_frame(adt(control_id, sender=f"S{n}")))
                code = (await client.read_ack(timeout=10)).get("MSA-1")
                outcomes.setdefault(control_id, []).append(code)
                if code == "AA":
                    if restarted.is_set():
                        accepted_after_restart.append(control_id)
                    break
                await asyncio.sleep(0.02)
            i += 1
        await client.close()

    async def scenario() -> None:
        async with listening(url, "restart") as (server, port):
            stop = asyncio.Event()
            senders = [asyncio.create_task(sender(port, n, stop)) for n in range(CONNECTIONS)]
            await asyncio.sleep(0.5)
            redis_server.kill()
            await asyncio.sleep(0.5)
            # Same files, same port. Started from a thread that lives as long as the test: the
            # child dies with the thread that started it (PR_SET_PDEATHSIG).
            restarter.start()
            assert await asyncio.to_thread(restarted.wait, 60)
            # Redis answers LOADING while it replays its AOF: intake keeps refusing until it is done.
            for _ in range(300):
                if len(accepted_after_restart) > 4 * CONNECTIONS:
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.gather(*senders)
            assert server.stats.storage_failures > 0

    try:
        asyncio.run(scenario())
        stored = Counter(e.control_id for e in queued(url, "restart"))
    finally:
        redis_server.stop()
        finished.set()

    acked = {cid for cid, codes in outcomes.items() if "AA" in codes}
    refused = {cid for cid, codes in outcomes.items() if "AR" in codes}
    assert refused, "the kill did not hit the stream"
    assert all(code in ("AA", "AR") for codes in outcomes.values() for code in codes)
    # Every AA'd message survived the SIGKILL; resends after an unknown outcome were not stored twice.
    assert acked <= set(stored)
    assert max(stored.values()) == 1
    # The listener recovered without help: messages refused while Redis was down, resent, and
    # new ones, were accepted after the restart.
    assert all(outcomes[cid][-1] == "AA" for cid in refused)
    assert len(accepted_after_restart) > CONNECTIONS
