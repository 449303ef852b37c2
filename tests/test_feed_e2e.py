"""With ``hl7gw run`` and real Redis: a consumer follows GET /fhir/_history?_sort=_lastUpdated from the
start while 2,000 messages arrive (creates, updates, deletes, merges), is stopped halfway and
restarted from the next link it kept, and ends with every change of the store once and in order."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hl7.client import MLLPClient
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from gateway.db.engine import make_engine
from gateway.db.schema import dead_letter, fhir_resource_history, message_archive
from tests.support.feed_stream import feed_message
from tests.support.gateway_process import GatewayProcess
from tests.support.queue import wait_until

pytestmark = pytest.mark.slow

MESSAGES = 2000
TOKEN = "feed-consumer-token"
START = "/fhir/_history?_sort=_lastUpdated&_count=50"
Version = tuple[str, str, int]


class Consumer:
    """A feed consumer as docs/consumers.md describes it: it processes a page, then stores the page's
    next link durably (here: a file), and starts from the stored link."""

    def __init__(self, base_url: str, cursor_file: Path, seen: list[Version]):
        self.base_url = base_url
        self.cursor_file = cursor_file
        self.seen = seen
        self.pages = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None
        self._empty = threading.Event()

    def start(self) -> Consumer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive()
        if self.error is not None:
            raise self.error

    def caught_up(self) -> bool:
        return self.pages > 0 and self._empty.is_set()

    def _run(self) -> None:
        url = self.cursor_file.read_text() if self.cursor_file.exists() else START
        headers = {"Authorization": f"Bearer {TOKEN}"}
        try:
            with httpx.Client(base_url=self.base_url, headers=headers, timeout=30) as client:
                while not self._stop.is_set():
                    response = client.get(url)
                    response.raise_for_status()
                    bundle = response.json()
                    for entry in bundle.get("entry", []):  # "process" the page (an empty one has no entry)
                        resource_type, resource_id = entry["request"]["url"].split("/")
                        version = int(entry["response"]["etag"].removeprefix('W/"').removesuffix('"'))
                        self.seen.append((resource_type, resource_id, version))
                    (url,) = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
                    self.cursor_file.write_text(url)  # then keep the next link
                    self.pages += 1
                    if "entry" in bundle:
                        self._empty.clear()
                    else:
                        self._empty.set()
                        time.sleep(0.1)
        except BaseException as exc:  # noqa: BLE001 - raised by stop()
            self.error = exc


@pytest.fixture
def gateway(tmp_path: Path, database_url: str) -> Iterator[GatewayProcess]:
    external = os.environ.get("HL7GW_REDIS_URL")
    namespace = f"hl7gw-feed-{uuid.uuid4().hex[:8]}" if external else None
    process = GatewayProcess(tmp_path / "data", redis_url=external, namespace=namespace)
    process.env["HL7GW_DATABASE_URL"] = database_url
    process.env["HL7GW_API_TOKENS"] = f"feed:{TOKEN}:reader"
    process.start()
    try:
        yield process
    finally:
        process.stop()


def history_in_feed_order(engine: Engine) -> list[Version]:
    table = fhir_resource_history
    stmt = select(table.c.type, table.c.id, table.c.version_id).where(table.c.type != "AuditEvent")
    with engine.connect() as conn:
        return [(row.type, row.id, row.version_id) for row in conn.execute(stmt.order_by(table.c.feed_position))]


def settled(engine: Engine) -> int:
    """Messages stored or dead-lettered so far."""
    with engine.connect() as conn:
        processed = message_archive.c.status == "processed"
        stored = conn.execute(select(func.count()).select_from(message_archive).where(processed))
        letters = conn.execute(select(func.count()).select_from(dead_letter))
        return int(stored.scalar_one()) + int(letters.scalar_one())


def test_a_restarted_consumer_gets_every_change_once_in_commit_order(
    gateway: GatewayProcess, database_url: str, tmp_path: Path
) -> None:
    engine = make_engine(database_url)
    cursor_file = tmp_path / "feed-cursor.txt"
    seen: list[Version] = []
    try:
        consumer = Consumer(gateway.base_url, cursor_file, seen).start()
        with MLLPClient("127.0.0.1", gateway.mllp_port) as mllp:
            for n in range(MESSAGES):
                ack = mllp.send_message(feed_message(n).decode())
                assert b"MSA|AA" in ack, ack
                if n == MESSAGES // 2:
                    # Halfway, once it has read something (the workers may still be behind the
                    # listener): stopped between pages, its next link on disk.
                    wait_until(lambda: len(seen) > 0, 60, "the consumer to read a first change")
                    consumer.stop()
                    resumed_from = len(seen)
                    consumer = Consumer(gateway.base_url, cursor_file, seen).start()
        wait_until(lambda: settled(engine) >= MESSAGES, 180, "every message to be stored")
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(dead_letter)).scalar_one() == 0
        expected = history_in_feed_order(engine)
        wait_until(lambda: len(seen) >= len(expected) and consumer.caught_up(), 120, "the consumer to catch up")
        consumer.stop()
        table = fhir_resource_history
        with engine.connect() as conn:
            tombstones = conn.execute(select(func.count()).select_from(table).where(table.c.deleted.is_(True)))
            merged = conn.execute(
                select(func.count())
                .select_from(table)
                .where(table.c.type == "Patient", table.c.content.like("%replaced-by%"))
            )
            counts = (tombstones.scalar_one(), merged.scalar_one())
    finally:
        engine.dispose()

    assert 0 < resumed_from < len(seen)
    assert len(seen) == len(set(seen))  # nothing twice
    assert seen == expected  # nothing missed, in commit order
    # Deletes (the A23s' tombstones) and merges (the A40s' merged-away Patients) are among them.
    assert counts[0] >= 100 and counts[1] >= 30, counts


def test_the_example_consumer_in_the_docs_runs(tmp_path: Path) -> None:
    """docs/consumers.md's httpx consumer, as written, follows the feed and keeps its cursor file."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "consumers.md").read_text()
    section = text[text.index("## The history feed") : text.index("## Subscriptions")]
    code = section[section.index("```python\n") + len("```python\n") :]
    (tmp_path / "follow_feed.py").write_text(code[: code.index("```")])
    external = os.environ.get("HL7GW_REDIS_URL")
    namespace = f"hl7gw-feed-{uuid.uuid4().hex[:8]}" if external else None
    gateway = GatewayProcess(tmp_path / "data", redis_url=external, namespace=namespace)
    gateway.env["HL7GW_API_TOKENS"] = f"feed:{TOKEN}:reader"
    gateway.start()
    try:
        with MLLPClient("127.0.0.1", gateway.mllp_port) as mllp:
            for n in (0, 1):  # a Patient; a Patient with a visit
                assert b"MSA|AA" in mllp.send_message(feed_message(n).decode())
        env = {**gateway.env, "HL7GW_URL": gateway.base_url, "HL7GW_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
        consumer = subprocess.Popen(
            [sys.executable, "follow_feed.py"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True
        )
        try:
            wait_until(lambda: (tmp_path / "feed-cursor.txt").exists(), 30, "the consumer to keep its cursor")
            wait_until(lambda: "_cursor=" in (tmp_path / "feed-cursor.txt").read_text(), 30, "a cursor past the start")
        finally:
            consumer.terminate()
            output, _ = consumer.communicate(timeout=30)
    finally:
        gateway.stop()
    assert "PUT Patient/" in output and "PUT Encounter/" in output
