"""Subscription tests' parts: a real HTTP receiver for notifications, and Subscription resources.

``Receiver`` is a threading http.server on a port of its own that records every notification it
accepts and answers what the test says (``respond``); it can be stopped and started again on the
same port, as a subscriber that goes away and comes back.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from gateway.services.embedded_redis import free_port


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    bundle: dict[str, Any]

    @property
    def status(self) -> dict[str, Any]:
        """The SubscriptionStatus Parameters of the notification."""
        resource: dict[str, Any] = self.bundle["entry"][0]["resource"]
        return resource

    @property
    def event_numbers(self) -> list[int]:
        return [
            int(part["valueString"])
            for parameter in self.status["parameter"]
            if parameter["name"] == "notification-event"
            for part in parameter["part"]
            if part["name"] == "event-number"
        ]

    @property
    def focus(self) -> list[str]:
        return [
            part["valueReference"]["reference"]
            for parameter in self.status["parameter"]
            if parameter["name"] == "notification-event"
            for part in parameter["part"]
            if part["name"] == "focus"
        ]


class Receiver:
    """A subscriber's endpoint: records what it accepts; ``respond(bundle) -> status`` decides."""

    def __init__(self, respond: Callable[[dict[str, Any]], int] | None = None):
        self.port = free_port()
        self.respond = respond or (lambda bundle: 200)
        self.received: list[Received] = []
        self.attempts = 0
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/notify"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                bundle = json.loads(body)
                with receiver.lock:
                    receiver.attempts += 1
                    status = receiver.respond(bundle)
                    if 200 <= status < 300:
                        receiver.received.append(Received(dict(self.headers.items()), bundle))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def event_numbers(self) -> list[int]:
        with self.lock:
            return [number for item in self.received for number in item.event_numbers]


def subscription(
    endpoint: str,
    criteria: str = "Observation?code=http://loinc.org|2345-7",
    *,
    payload: str | None = "application/fhir+json",
    headers: list[str] | None = None,
    status: str = "requested",
) -> dict[str, Any]:
    """A Subscription resource as a client would write it."""
    channel: dict[str, Any] = {"type": "rest-hook", "endpoint": endpoint}
    if payload is not None:
        channel["payload"] = payload
    if headers:
        channel["header"] = headers
    return {
        "resourceType": "Subscription",
        "status": status,
        "reason": "test",
        "criteria": criteria,
        "channel": channel,
    }


def oru(number: int, code: str = "2345-7") -> bytes:
    """An ORU^R01 with MSH-10 ``SUB-<number>`` whose one OBX (LOINC ``code``) becomes an Observation
    of its own (its ids come from the order numbers, unique per message)."""
    return (
        f"MSH|^~\\&|LAB|HOSP|GW|GW|20260101120000||ORU^R01^ORU_R01|SUB-{number}|P|2.5.1\r"
        f"PID|1||P{number % 7}^^^HOSP^MR||Doe^Jane||19800101|F\r"
        f"OBR|1|PL{number}^LAB|FI{number}^LAB|{code}^Test^LN|||20260101110000\r"
        f"OBX|1|NM|{code}^Test^LN||{90 + number % 50}|mg/dL|70-99||||F|||20260101110000\r"
    ).encode()
