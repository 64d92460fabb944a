"""HTTP/1.1 to the workers on the hot path: a keep-alive connection pool per worker.

Why not aiohttp's client here: for a small completion, building a `ClientRequest`, its
payload, timers and tasks cost more CPU than everything else the router does per request
(py-spy on `bench_router.py`: the client was about half of the router's samples). The
router only ever sends one kind of request, a POST or GET with a body already in bytes, to
a worker it trusts, so it writes the request in one `transport.write` and parses the
answer with httptools (llhttp, the parser uvicorn uses). aiohttp stays for everything
else (control-plane calls, the server side).

Semantics the proxy relies on:
- `ConnectFailed`: no connection could be made (the worker is gone);
- `ConnectionBroken`: the connection closed or sent garbage before the response was
  complete (a kept-alive connection closed by the worker looks like this too);
- `TimeoutError`: the request's total deadline passed, waiting for the head or the body
  (the caller must `close()` or `release()` every response, which also stops its timer).
- `release()` keeps the connection for the next request only if the response was read to
  its end and the worker allows keep-alive; `close()` drops it, which is how the worker
  learns that a client went away.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

# Reading pauses when this much of a response is buffered and not yet taken by the proxy
# (a slow client on a stream), and resumes once the proxy has taken it.
_HIGH_WATER = 1 << 20


class UpstreamError(Exception):
    pass


class ConnectFailed(UpstreamError):
    """No connection to the worker could be made."""


class ConnectionBroken(UpstreamError):
    """The connection ended before the response was complete."""


@dataclass(frozen=True)
class _Target:
    host: str
    port: int
    ssl: ssl.SSLContext | None
    head: bytes  # the Host header line, ready to send


class UpstreamResponse:
    """One response: status and headers at once, the body as it arrives."""

    def __init__(self, conn: _Connection, deadline: float) -> None:
        self._conn = conn
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.keep_alive = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._complete = False
        self._error: UpstreamError | TimeoutError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._head = conn.loop.create_future()
        # One timer for the whole request (cheaper than a timeout per wait): it fails
        # whatever is waiting with TimeoutError.
        self._timer: asyncio.TimerHandle | None = conn.loop.call_at(deadline, self._expire)

    def header(self, name: str, default: str = "") -> str:
        lower = name.lower()
        for key, value in self.headers:
            if key.lower() == lower:
                return value
        return default

    def at_eof(self) -> bool:
        return self._complete and not self._chunks

    async def read(self) -> bytes:
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return b"".join(parts)

    async def readany(self) -> bytes:
        """The next piece of body (all that is buffered), or b"" at the end."""
        while not self._chunks:
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        if self._buffered >= _HIGH_WATER:
            self._conn.resume()
        self._buffered = 0
        return data

    def release(self) -> None:
        """Done with it: the connection goes back to the pool if it can be reused."""
        self._stop_timer()
        self._conn.finish(reusable=self.at_eof() and self.keep_alive)

    def close(self) -> None:
        self._stop_timer()
        self._conn.finish(reusable=False)

    async def _wait_head(self) -> None:
        await self._head

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self._complete or self._error is not None:
            return
        self._error = TimeoutError("the worker did not answer within the request timeout")
        if not self._head.done():
            self._head.set_exception(self._error)
            self._head.exception()
        self._wake()

    # --- fed by the connection ---

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered >= _HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _done(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if self._complete or self._error is not None:
            return
        self._error = error
        if not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # retrieved: nobody may be waiting any more
        self._wake()


class _Connection(asyncio.Protocol):
    """One TCP connection to a worker; carries one response at a time. httptools calls the
    `on_*` methods while `data_received` feeds it."""

    def __init__(self, pool: UpstreamPool, target: _Target, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.target = target
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self.closed = False
        self.idle_since = 0.0
        self._paused = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        if self.response is None:  # bytes nobody asked for: the connection is unusable
            self._abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.response._fail(ConnectionBroken(f"malformed response: {exc}"))
            self._abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        if self.response is not None:
            reason = f": {exc}" if exc else ""
            self.response._fail(ConnectionBroken(f"connection closed before the response was complete{reason}"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        resp = self.response
        assert resp is not None
        resp.status = self.parser.get_status_code()
        resp.keep_alive = self.parser.should_keep_alive()
        if not resp._head.done():
            resp._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response._feed(body)

    def on_message_complete(self) -> None:
        assert self.response is not None
        self.response._done()

    # used by the pool and the response

    def send(self, data: bytes, response: UpstreamResponse) -> None:
        assert self.transport is not None
        self.response = response
        self.transport.write(data)

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def finish(self, reusable: bool) -> None:
        if self.response is None:
            return
        self.response = None
        if reusable and not self.closed:
            # Reused only at a message boundary (the response was read to its end), where llhttp
            # is ready for the next message: the connection keeps its parser.
            self.resume()
            self.pool._checkin(self)
        else:
            self._abort()

    def _abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()


class UpstreamPool:
    """Keep-alive connections per worker (most recently used first)."""

    def __init__(self, request_timeout_s: float, connect_timeout_s: float, keepalive_timeout_s: float) -> None:
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_timeout_s = keepalive_timeout_s
        self._targets: dict[str, _Target] = {}
        self._idle: dict[_Target, list[_Connection]] = {}
        self._all: set[_Connection] = set()
        self._ssl: ssl.SSLContext | None = None

    async def request(self, method: str, base_url: str, path: str, headers: dict[str, str],
                      body: bytes | None) -> UpstreamResponse:
        """Send one request and wait for the response's head."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout_s
        target = self._target(base_url)
        conn = self._checkout(target)
        if conn is None:
            conn = await self._connect(target, loop)
        lines = [f"{method} {path} HTTP/1.1\r\n".encode("latin-1"), target.head]
        for key, value in headers.items():
            lines.append(f"{key}: {value}\r\n".encode("latin-1"))
        if body is not None:
            lines.append(b"Content-Length: %d\r\n\r\n" % len(body))
            lines.append(body)
        else:
            lines.append(b"\r\n")
        response = UpstreamResponse(conn, deadline)
        conn.send(b"".join(lines), response)
        try:
            await response._wait_head()
        except BaseException:
            response.close()
            raise
        return response

    def close(self) -> None:
        for conn in list(self._all):
            conn._abort()
        self._idle.clear()

    def _target(self, base_url: str) -> _Target:
        target = self._targets.get(base_url)
        if target is None:
            parts = urlsplit(base_url)
            secure = parts.scheme == "https"
            port = parts.port or (443 if secure else 80)
            host = parts.hostname or ""
            if secure and self._ssl is None:
                self._ssl = ssl.create_default_context()
            default_port = port == (443 if secure else 80)
            host_header = parts.netloc.rsplit("@", 1)[-1] if not default_port else host
            target = _Target(host, port, self._ssl if secure else None,
                             f"Host: {host_header}\r\n".encode("latin-1"))
            self._targets[base_url] = target
        return target

    def _checkout(self, target: _Target) -> _Connection | None:
        idle = self._idle.get(target)
        if not idle:
            return None
        oldest_ok = time.monotonic() - self.keepalive_timeout_s
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if conn.idle_since < oldest_ok:
                # The rest are older still: the worker may close them any moment.
                for stale in [conn, *idle]:
                    stale._abort()
                idle.clear()
                return None
            return conn
        return None

    def _checkin(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.target, []).append(conn)

    def _forget(self, conn: _Connection) -> None:
        self._all.discard(conn)

    async def _connect(self, target: _Target, loop: asyncio.AbstractEventLoop) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self, target, loop), target.host, target.port, ssl=target.ssl,
                    server_hostname=target.host if target.ssl else None)
        except TimeoutError as exc:
            raise ConnectFailed(f"connecting to {target.host}:{target.port} timed out") from exc
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {target.host}:{target.port}: {exc}") from exc
        self._all.add(protocol)
        return protocol
