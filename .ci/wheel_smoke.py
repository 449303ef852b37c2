"""Run the gateway from an installed wheel, away from the source tree: start ``hl7gw run``, send a
sample message over MLLP, read the Patient back over HTTP, load the console's sign-in page, stop.
Exits non-zero on any failure.

    python .ci/wheel_smoke.py SAMPLE.hl7     (with the wheel's venv active, from any directory)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def console_served(api: httpx.Client) -> bool:
    """The operator console's templates and vendored htmx travel inside the wheel."""
    login = api.get("/console/login")
    htmx = api.get("/console/static/htmx.min.js")
    if login.status_code != 200 or "API token" not in login.text or htmx.status_code != 200:
        print(f"wheel smoke: console not served ({login.status_code}, {htmx.status_code})", file=sys.stderr)
        return False
    print("wheel smoke: console served")
    return True


def main(sample: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        mllp, http = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HL7GW_")}
        env.update(HL7GW_DATA_DIR=str(data), HL7GW_MLLP_PORT=str(mllp), HL7GW_HTTP_PORT=str(http))
        log = Path(tmp) / "gateway.log"
        with open(log, "wb") as out:
            gateway = subprocess.Popen(["hl7gw", "run"], cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while b"hl7gw: ready" not in log.read_bytes():
                if gateway.poll() is not None or time.monotonic() > deadline:
                    print(log.read_text(errors="replace"), file=sys.stderr)
                    return 1
                time.sleep(0.2)
            sent = subprocess.run(["hl7gw", "send", str(sample), "--port", str(mllp)], cwd=tmp, env=env, check=False)
            if sent.returncode != 0:
                return 1
            token = (data / "admin.token").read_text().strip()
            with httpx.Client(base_url=f"http://127.0.0.1:{http}", headers={"Authorization": f"Bearer {token}"}) as api:
                while time.monotonic() < deadline:
                    bundle = api.get("/fhir/Patient").json()
                    if bundle.get("total", 0) >= 1:
                        family = bundle["entry"][0]["resource"]["name"][0]["family"]
                        print(f"wheel smoke: Patient stored, family {family}")
                        return 0 if console_served(api) else 1
                    time.sleep(0.2)
            print("wheel smoke: no Patient stored", file=sys.stderr)
            print(log.read_text(errors="replace"), file=sys.stderr)
            return 1
        finally:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(120)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]).resolve()))
