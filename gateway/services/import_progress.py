"""The durable progress of one batch file's import, in the Redis the messages are committed to.

One hash per file, keyed by the SHA-256 of the file's bytes as given (compressed when the file
is): ``status`` (running, done), the committed prefix (``offset``: the end of the last message
committed with every item before it; its ``batch`` and ``index``; ``count`` items), the counts of
that prefix by outcome, the batch reports so far, the file's name and size and its job id.

It is written after the group commits that move the prefix, never before: a crash loses at most
the writes of the last moment, and the resumed import sends those messages again. That overlap is
absorbed by the intake's duplicate check (same sender + MSH-10 + same bytes within
HL7GW_DEDUP_WINDOW_S: acknowledged, not queued again), so each message is queued once. Writes are
coalesced: one in flight at a time, the newest prefix next.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import redis.asyncio as aioredis

from gateway.keys import Keys

RUNNING, DONE = "running", "done"


class ProgressRecord:
    """Load and save the progress hash of one file (``sha256``)."""

    def __init__(self, redis_url: str, keys: Keys, sha256: str):
        self.key = keys.import_progress(sha256)
        self._redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
        self._latest: dict[str, Any] | None = None
        self._writer: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        #: Closed: later advances are dropped (commits that land after a cancelled import closed
        #: its record: the resumed import sends those messages again, answered as duplicates).
        self._closed = False

    async def load(self) -> dict[str, Any] | None:
        """The record as saved (numbers as ints, counts and batches decoded), None when absent."""
        record: dict[str, Any] = {str(k): v for k, v in (await self._redis.hgetall(self.key)).items()}
        if not record:
            return None
        for name in ("offset", "batch", "index", "count", "size", "started", "finished"):
            record[name] = int(record.get(name) or 0)
        for name, empty in (("counts", "{}"), ("batches", "[]")):
            record[name] = json.loads(record.get(name) or empty)
        return record

    async def start(self, fields: dict[str, Any]) -> None:
        """A new import of the file: the record replaced by ``fields`` (status running)."""
        await self._redis.delete(self.key)
        await self._redis.hset(self.key, mapping=_encoded({"status": RUNNING, **fields}))

    def advance(self, fields: dict[str, Any]) -> None:
        """Save ``fields`` soon (the newest wins when several wait); call from the event loop."""
        if self._closed:
            return
        self._latest = fields
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write(), name="hl7gw-import-progress")

    async def _write(self) -> None:
        while self._latest is not None:
            fields, self._latest = self._latest, None
            try:
                await self._redis.hset(self.key, mapping=_encoded(fields))
            except Exception as exc:  # noqa: BLE001 - a lost write only makes a resume start earlier
                self.error = exc

    async def flush(self) -> None:
        """Wait until every ``advance`` is written."""
        while self._writer is not None and not self._writer.done():
            await self._writer

    async def finish(self, fields: dict[str, Any]) -> None:
        await self.flush()
        mapping = _encoded({**fields, "status": DONE, "finished": int(time.time() * 1000)})
        await self._redis.hset(self.key, mapping=mapping)

    async def close(self) -> None:
        await self.flush()
        self._closed = True
        await self._redis.aclose()


def _encoded(fields: dict[str, Any]) -> Any:
    return {k: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v for k, v in fields.items()}
