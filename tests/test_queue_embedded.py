"""The embedded Redis keeps every acknowledged write across a crash (SIGKILL) and restart, and is
private to the gateway: a password, and no administrative commands."""

from __future__ import annotations

import asyncio
import logging
import socket
import stat
import time
import uuid
from pathlib import Path

import pytest
import redis

from gateway.envelope import Envelope
from gateway.keys import Keys
from gateway.queue.durability import require_durable
from gateway.queue.intake import Intake
from gateway.services.embedded_redis import EmbeddedRedis


def test_config_is_durable(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("appendfsync")["appendfsync"] == "always"
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        assert Path(client.config_get("dir")["dir"]) == (tmp_path / "redis").resolve()
        client.close()
    finally:
        server.stop()


def test_committed_messages_survive_sigkill(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    envelopes = [
        Envelope(
            id=str(uuid.uuid4()),
            raw=f"MSH|^~\\&|A|B|||||ADT^A01|{i}|P|2.5".encode(),
            received_at=int(time.time() * 1000),
            sender="A|B",
            control_id=str(i),
        )
        for i in range(200)
    ]

    async def commit() -> None:
        intake = Intake(server.url)
        await intake.start()
        try:
            await asyncio.gather(*(intake.submit(e) for e in envelopes))
        finally:
            await intake.close()

    try:
        asyncio.run(commit())
        server.kill()  # no shutdown, no final fsync: only what was on disk at each reply counts
        restarted = EmbeddedRedis(tmp_path / "redis", port=server.port)
        restarted.start()
        try:
            client = redis.Redis.from_url(restarted.url)
            assert client.llen(Keys().queue()) == 200
            assert client.hlen(Keys().queue_messages()) == 200
            client.close()
        finally:
            restarted.stop()
    finally:
        server.stop()


def test_stale_server_on_same_directory_is_replaced(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path / "redis")
    first.start()
    try:
        second = EmbeddedRedis(tmp_path / "redis")
        second.start()  # first's process is stopped, its AOF taken over
        try:
            assert first.process is not None
            first.process.wait(5)
            assert redis.Redis.from_url(second.url).ping()
        finally:
            second.stop()
    finally:
        first.stop()


def test_embedded_redis_answers_only_with_its_password_and_never_config_set(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another local user can reach 127.0.0.1 but not the password (0600 file): every command is
    refused; with it, the administrative commands still are (no CONFIG SET dir + SAVE, no MODULE
    LOAD, no DEBUG, no ACL to undo it), but CONFIG GET, which the durability check reads, is not."""
    server = EmbeddedRedis(tmp_path / "redis")
    with caplog.at_level(logging.DEBUG):
        server.start()
    try:
        password = server.password
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"PING\r\nGET x\r\n")
            time.sleep(0.2)
            assert sock.recv(1000).count(b"-NOAUTH") == 2
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        for command in (
            ("CONFIG", "SET", "dir", str(tmp_path)),
            ("CONFIG", "REWRITE"),
            ("DEBUG", "SLEEP", "0"),
            ("MODULE", "LIST"),
            ("ACL", "SETUSER", "default", "+@all"),
            ("REPLICAOF", "127.0.0.1", "1"),
            ("SAVE",),
            ("SHUTDOWN",),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)
        require_durable(server.url, allow_volatile=False)  # read with CONFIG GET, as on any Redis
        client.close()
        for name in ("redis.password", "redis.conf"):
            assert stat.S_IMODE((tmp_path / "redis" / name).stat().st_mode) == 0o600
        assert password not in (tmp_path / "redis" / "redis.conf").read_text()
        assert password not in caplog.text and password not in server.display_url
        assert EmbeddedRedis.running_url(tmp_path / "redis") == server.url  # what operator commands use
    finally:
        server.stop()
