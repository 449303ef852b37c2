"""A pipelined Redis connection: commands go out in order without waiting for earlier replies.

The intake's group commit needs this and redis-py cannot give it: redis-py holds a connection
for the whole of one command, so a second commit either waits for the first reply or goes out on
another connection, where Redis may run it first. Here every command is written at once on one
connection, Redis runs them in the order sent (so sequence numbers follow arrival order), and
the commands it reads in one event-loop turn share one ``appendfsync always`` fsync.

Replies are parsed as they arrive and each command's callback runs right there, in the same
event-loop turn (no task or future in between: a commit's ACKs go out as soon as its reply is in).
Only what the intake needs: RESP2, AUTH, SELECT, TLS and unix sockets from the URL (redis-py's own
URL parser), and a watchdog that fails every waiting command when the oldest has had no reply
for ``timeout`` seconds (the connection is then dropped and made anew).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Reply = Any
#: Called with (reply, None), or (None, error): a ResponseError for an error reply, a
#: ConnectionError when the connection broke or the reply took longer than the timeout.
Callback = Callable[[Reply, BaseException | None], None]
_INCOMPLETE = object()
#: Run on each new connection after its setup commands; raises to refuse the connection.
Verify = Callable[["PipelinedRedis"], Awaitable[None]]


def bulk(arg: str | bytes | int) -> bytes:
    """One RESP2 bulk string."""
    data = arg if isinstance(arg, bytes) else str(arg).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: PipelinedRedis):
        self.owner = owner
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        pos = 0
        try:
            while pos < len(buffer):
                parsed = parse_reply(buffer, pos)
                if parsed is _INCOMPLETE:
                    break
                reply, pos = parsed
                self.owner._reply(reply)
        except Exception as exc:  # noqa: BLE001 - a reply we cannot read: the connection is unusable
            self.owner._drop(RedisConnectionError(f"unreadable reply from Redis: {exc!r}"), self)
            return
        del buffer[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._drop(RedisConnectionError(f"Redis connection lost: {exc or 'closed by Redis'}"), self)


class PipelinedRedis:
    def __init__(self, url: str, *, timeout: float = 5.0):
        self.options = parse_url(url)
        self.timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._protocol: _Protocol | None = None
        self._waiting: collections.deque[tuple[Callback, float]] = collections.deque()
        self._connecting: asyncio.Task[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    @property
    def connected(self) -> bool:
        return self._transport is not None

    async def connect(
        self, setup: tuple[tuple[str | bytes | int, ...], ...] = (), verify: Verify | None = None
    ) -> None:
        """Connect unless connected; ``setup`` commands run first on each new connection, then
        ``verify`` (whose exception drops the connection). Concurrent callers share one attempt."""
        if self._transport is not None:
            return
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._open(setup, verify))
        await asyncio.shield(self._connecting)

    def send(self, *args: str | bytes | int) -> asyncio.Future[Reply]:
        """Write one command now; the future gets its reply (see ``Callback`` for errors)."""
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

        def settle(reply: Reply, error: BaseException | None) -> None:
            if not future.done():
                future.set_exception(error) if error is not None else future.set_result(reply)

        self.send_encoded(len(args), b"".join(bulk(arg) for arg in args), settle)
        return future

    def send_encoded(self, count: int, arguments: bytes, callback: Callback) -> None:
        """Write a command already encoded as ``count`` bulk strings; ``callback`` gets its reply."""
        if self._transport is None:
            callback(None, RedisConnectionError("not connected to Redis"))
            return
        self._transport.write(b"*%d\r\n" % count + arguments)
        self._waiting.append((callback, time.monotonic()))
        if self._watchdog is None:
            self._arm_watchdog()

    def reset(self, error: BaseException) -> None:
        """Drop the connection (the next ``connect`` makes a new one); waiting commands fail."""
        self._drop(error, self._protocol)

    async def close(self) -> None:
        self._drop(RedisConnectionError("connection closed"), self._protocol)

    async def _open(self, setup: tuple[tuple[str | bytes | int, ...], ...], verify: Verify | None) -> None:
        opts = self.options
        loop = asyncio.get_running_loop()
        protocol = _Protocol(self)
        try:
            if opts.get("connection_class") is UnixDomainSocketConnection:
                opening = loop.create_unix_connection(lambda: protocol, opts["path"])
            else:
                context = ssl.create_default_context() if opts.get("connection_class") is SSLConnection else None
                host, port = opts.get("host", "localhost"), int(opts.get("port", 6379))
                opening = loop.create_connection(lambda: protocol, host, port, ssl=context)
            transport, _ = await asyncio.wait_for(opening, self.timeout)
        except (TimeoutError, OSError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc or type(exc).__name__}") from None
        self._transport, self._protocol = transport, protocol
        commands: list[tuple[str | bytes | int, ...]] = []
        if opts.get("password"):
            user = opts.get("username")
            commands.append(("AUTH", user, opts["password"]) if user else ("AUTH", opts["password"]))
        if int(opts.get("db") or 0):
            commands.append(("SELECT", int(opts["db"])))
        commands += setup
        try:
            await asyncio.gather(*(self.send(*c) for c in commands))
            if verify is not None:
                await verify(self)
        except Exception:
            self._drop(RedisConnectionError("connection setup failed"), protocol)
            raise

    def _reply(self, reply: Reply) -> None:
        if not self._waiting:
            raise RedisConnectionError("reply without a command")
        callback, _ = self._waiting.popleft()
        if isinstance(reply, ResponseError):
            callback(None, reply)
        else:
            callback(reply, None)

    def _arm_watchdog(self) -> None:
        self._watchdog = asyncio.get_running_loop().call_later(self.timeout / 4, self._check)

    def _check(self) -> None:
        self._watchdog = None
        if not self._waiting:
            return
        if time.monotonic() - self._waiting[0][1] > self.timeout:
            self._drop(RedisTimeoutError(f"no reply from Redis in {self.timeout:g} s"), self._protocol)
        else:
            self._arm_watchdog()

    def _drop(self, error: BaseException, protocol: _Protocol | None) -> None:
        """Forget the connection ``protocol`` belongs to; every command still waiting fails."""
        if protocol is not self._protocol or protocol is None:
            return  # an older connection, already dropped
        transport, self._transport, self._protocol = self._transport, None, None
        if transport is not None:
            transport.close()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        waiting, self._waiting = self._waiting, collections.deque()
        for callback, _ in waiting:
            callback(None, error)


def parse_reply(buffer: bytearray, pos: int) -> Any:
    """(reply, next position) for the RESP2 reply at ``pos``, or _INCOMPLETE."""
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        return _INCOMPLETE
    kind, line = buffer[pos], bytes(buffer[pos + 1 : end])
    if kind == 0x24:  # $ bulk string
        size = int(line)
        if size < 0:
            return None, end + 2
        stop = end + 2 + size
        return (bytes(buffer[end + 2 : stop]), stop + 2) if len(buffer) >= stop + 2 else _INCOMPLETE
    if kind == 0x3A:  # : integer
        return int(line), end + 2
    if kind == 0x2B:  # + simple string
        return line.decode(), end + 2
    if kind == 0x2D:  # - error
        return ResponseError(line.decode(errors="replace")), end + 2
    if kind == 0x2A:  # * array
        count, items, at = int(line), [], end + 2
        for _ in range(max(count, 0)):
            parsed = parse_reply(buffer, at)
            if parsed is _INCOMPLETE:
                return _INCOMPLETE
            item, at = parsed
            items.append(item)
        return (items if count >= 0 else None), at
    raise ValueError(f"unexpected reply type {bytes([kind])!r}")
