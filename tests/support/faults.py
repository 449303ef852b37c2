"""Faults of real servers, for tests: a TCP proxy that can cut the network between the gateway and a
server (outages), and a trigger that makes the database refuse one row.

While cut, every open connection is closed and new ones are closed as soon as they are accepted:
to a client that is what a server that went away looks like (a database restart, a network
partition ended by a reset). ``restore`` lets connections through again. The servers behind it
are real: the test PostgreSQL, a real Redis.
"""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy.engine import Engine


class CuttableProxy:
    def __init__(self, host: str, port: int):
        self.upstream = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self.is_cut = False
        self._closed = False
        threading.Thread(target=self._accept, name="cuttable-proxy", daemon=True).start()

    @classmethod
    def for_url(cls, url: str) -> CuttableProxy:
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or {"redis": 6379}.get(parts.scheme, 5432))

    def url(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@127.0.0.1:{self.port}" if credentials else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def cut(self) -> None:
        with self._lock:
            self.is_cut = True
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            _close(*pair)

    def restore(self) -> None:
        self.is_cut = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.is_cut:
                _close(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._pairs.append((client, server))
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(source, target), daemon=True).start()


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            target.sendall(data)
    except OSError:
        pass
    _close(source, target)


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


def fail_inserts_of(engine: Engine, resource_id: str, column: str = "id") -> None:
    """A real database fault: a trigger that rejects one id (or, with ``column="type"``, every
    resource of one type), so an entry fails inside the transaction."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql(
                f"CREATE TRIGGER reject BEFORE INSERT ON fhir_resource WHEN NEW.{column} = '{resource_id}' "
                "BEGIN SELECT RAISE(ABORT, 'rejected by test trigger'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION reject() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.{column} = '{resource_id}' THEN RAISE EXCEPTION 'rejected by test trigger'; END IF; "
                "RETURN NEW; END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER reject BEFORE INSERT ON fhir_resource FOR EACH ROW EXECUTE FUNCTION reject()"
            )
