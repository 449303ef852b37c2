"""Run ``hl7gw run`` as a real subprocess for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from gateway.services.embedded_redis import free_port

#: HL7GW_* settings the test process's environment passes on: the suite's test Redis is volatile
#: (tests/conftest.py says why it allows that).
KEPT_SETTINGS = frozenset({"HL7GW_ALLOW_VOLATILE_REDIS"})


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without HL7GW_* settings (but KEPT_SETTINGS), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HL7GW_") or k in KEPT_SETTINGS}
    env.update(extra)
    return env


class GatewayProcess:
    def __init__(self, data_dir: Path, *, redis_url: str | None = None, namespace: str | None = None):
        self.data_dir = data_dir
        self.mllp_port = free_port()
        self.http_port = free_port()
        extra = {
            "HL7GW_DATA_DIR": str(data_dir),
            "HL7GW_MLLP_PORT": str(self.mllp_port),
            "HL7GW_HTTP_PORT": str(self.http_port),
            "HL7GW_LOG_LEVEL": "WARNING",
        }
        if redis_url:
            extra["HL7GW_REDIS_URL"] = redis_url
        if namespace:
            extra["HL7GW_REDIS_NAMESPACE"] = namespace
        self.env = clean_env(**extra)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-gateway.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 90.0, *, create_data_dir: bool = True) -> GatewayProcess:
        """Start and wait until ready; ``create_data_dir=False`` lets the gateway create it."""
        (self.data_dir if create_data_dir else self.data_dir.parent).mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run"], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"hl7gw run exited with {self.process.returncode}:\n{self.log()}")
            if b"hl7gw: ready" in self.log_path.read_bytes()[offset:]:
                return self
            time.sleep(0.1)
        raise RuntimeError(f"hl7gw run not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {self.token()}"}, timeout=10)

    def wait_for(self, path: str, predicate, timeout: float = 10.0) -> dict:  # type: ignore[no-untyped-def]
        """Poll GET ``path`` until ``predicate(json)`` holds; returns the last JSON."""
        deadline = time.monotonic() + timeout
        body: dict = {}
        with self.client() as client:
            while time.monotonic() < deadline:
                response = client.get(path)
                if response.status_code == 200:
                    body = response.json()
                    if predicate(body):
                        return body
                time.sleep(0.05)
        raise AssertionError(f"GET {path} did not satisfy the condition in {timeout}s: {body}\n{self.log()}")

    def descendants(self) -> list[int]:
        """PIDs of every process below the supervisor (children run in their own sessions)."""
        assert self.process is not None
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        found, frontier = [], [self.process.pid]
        while frontier:
            pid = frontier.pop()
            kids = [p for p, pp in parents.items() if pp == pid]
            found += kids
            frontier += kids
        return found

    def kill_tree(self) -> None:
        """SIGKILL the supervisor and every descendant at once, as a power cut would."""
        assert self.process is not None
        pids = [self.process.pid, *self.descendants()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(10)

    def stop(self, timeout: float = 120.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_tree()
            raise
