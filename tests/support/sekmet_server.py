"""A real FHIR R4 server for the remote-sink tests: sekmet-fhir from PyPI, in a virtual environment of its own.

The environment is made once under ``$HL7GW_TEST_CACHE`` (default ``~/.cache/hl7gw-test``) and reused
by later runs; a fresh machine (CI) installs it on first use (about 20 s). Each server is a
subprocess on a free port with its own SQLite file, bearer-token auth, and its simulator off, so it
only stores what it is sent. Outages are real: ``pause`` (SIGSTOP: connections hang until the
client times out), ``kill`` (connections refused), ``start`` again on the same port and data.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from gateway.services.embedded_redis import free_port

SEKMET = "sekmet-fhir==0.1.1"
TOKEN = "hl7gw-test-token"


class SekmetUnavailable(Exception):
    """sekmet-fhir could not be installed (no package registry reachable)."""


def sekmet_executable() -> Path:
    """The ``sekmet`` command of the cached virtual environment, installing it the first time."""
    cache = Path(os.environ.get("HL7GW_TEST_CACHE", Path.home() / ".cache" / "hl7gw-test"))
    venv = cache / "sekmet-venv"
    marker = venv / f"installed-{SEKMET}"
    executable = venv / "bin" / "sekmet"
    if marker.exists():
        return executable
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "sekmet-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time, across test processes
        if not marker.exists():
            _install(venv)
            marker.touch()
    return executable


def _install(venv: Path) -> None:
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", SEKMET],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, timeout=600)
        if done.returncode != 0:
            raise SekmetUnavailable(f"{' '.join(step)} failed:\n{done.stderr.decode(errors='replace')[-2000:]}")


class SekmetServer:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        data_dir.mkdir(parents=True, exist_ok=True)
        self.config = data_dir / "settings.yaml"
        self.config.write_text(
            f"base_url: {self.base_url}\n"
            f"host: 127.0.0.1\nport: {self.port}\ndata_dir: {data_dir / 'data'}\n"
            f"server_auth: {{types: [bearer], tokens: [{TOKEN}]}}\n"
            "simulator: {enabled: false}\nlog_inbound: false\n"
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    @property
    def sink_spec(self) -> str:
        return f"{self.base_url};auth=Bearer {TOKEN}"

    def start(self, timeout: float = 60.0) -> SekmetServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HL7GW_", "SEKMET_"))}
        env["SEKMET_CONFIG"] = str(self.config)
        log = open(self.data_dir / "server.log", "ab")
        self.process = subprocess.Popen(
            [str(sekmet_executable()), "serve"], env=env, cwd=self.data_dir, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sekmet exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/metadata", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"sekmet not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        path = self.data_dir / "server.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def pause(self) -> None:
        """An outage where the server hangs: requests time out."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        """An outage where the server is gone: connections are refused."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url + "/", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
