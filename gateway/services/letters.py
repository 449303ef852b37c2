"""Where a worker's dead letters go: the database, or Redis while the database does not answer.

A letter that cannot be written to the dead-letter store is parked in a Redis hash (``Keys.
parked_letters``), as durable as the queue it came from, and the message is acknowledged only
after one of the two writes succeeded. ``move_parked`` writes parked letters to the database when
it answers again and removes each from Redis after its commit (letter ids are deterministic, so a
crash between the two writes leaves one letter, not two).
"""

from __future__ import annotations

import logging

import orjson
import redis

from gateway.errors import Policy, describe, policy_of
from gateway.journal.dead_letters import DeadLetterStore, Letter
from gateway.keys import Keys
from gateway.metrics import recorder

log = logging.getLogger(__name__)


class LetterBox:
    def __init__(self, store: DeadLetterStore, client: redis.Redis, keys: Keys):
        self.store = store
        self.client = client
        self.key = keys.parked_letters()
        self.metrics = recorder()

    def post(self, letter: Letter) -> str:
        """Write ``letter``: "stored" in the database, "parked" in Redis when the database does not
        take it, or raise when Redis does not either (the caller waits and tries again)."""
        where = self._write(letter)
        self.metrics.dead_letter(letter.stage, letter.error_type)
        return where

    def _write(self, letter: Letter) -> str:
        try:
            self.store.park(letter)
            return "stored"
        except Exception as exc:  # noqa: BLE001 - whatever the database says, the letter is kept
            self.client.hset(self.key, letter.id, orjson.dumps(letter.to_json()))
            outage = policy_of(exc) is Policy.OUTAGE
            log.log(
                logging.WARNING if outage else logging.ERROR,
                "dead letter %s parked in Redis: the database %s (%s)",
                letter.id,
                "does not answer" if outage else "refused it",
                describe(exc),
            )
            return "parked"

    def parked(self) -> int:
        return int(self.client.hlen(self.key))

    def move_parked(self, limit: int = 500) -> int:
        """Write up to ``limit`` parked letters to the database; how many were moved. Stops at an
        outage; a letter the database refuses stays parked (and is logged) while the others move."""
        moved = 0
        for letter_id, data in self.client.hscan_iter(self.key, count=100):
            letter = Letter.from_json(orjson.loads(data))
            try:
                self.store.park(letter)
            except Exception as exc:  # noqa: BLE001
                if policy_of(exc) is Policy.OUTAGE:
                    break
                log.error("parked dead letter %s cannot be written: %s", letter.id, describe(exc))
                continue
            self.client.hdel(self.key, letter_id)
            moved += 1
            if moved >= limit:
                break
        if moved:
            log.info("moved %d parked dead letter(s) from Redis to the database", moved)
        return moved
