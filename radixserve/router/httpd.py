"""The router's HTTP/1.1 server: asyncio Protocols and httptools (llhttp, uvicorn's parser).

Why not aiohttp's server: with the upstream side already lean (upstream.py), aiohttp's request
and response machinery was the largest share of the router's CPU per proxied request, and the
router's requests/s is bound by CPU per request (docs/router.md, "HTTP stack"). A proxy needs
little of a framework: one handler per route, bodies buffered up to a limit, responses written
in one `transport.write`, chunked streams with back-pressure.

What it does:
- keep-alive and pipelining (requests on one connection are answered in order, one at a time;
  reading pauses while one is being answered);
- `Expect: 100-continue`; bodies over `max_body_bytes` answer 413 (read and dropped, then the
  connection closes); malformed requests 400, oversized heads 431, then the connection closes;
- a client that goes away cancels its handler (the proxy closes the upstream connection then,
  which is how the worker learns of it);
- `close_connections()` true (draining) adds `Connection: close` to every answer;
- `shutdown(timeout_s)`: close the listener and idle connections, let answers in progress finish
  for up to `timeout_s`, cancel what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qsl

import httptools
import msgspec

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024  # request line and headers together

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_encode_json = msgspec.json.Encoder().encode


class Headers(dict[str, str]):
    """Request headers by lower-cased name (repeated ones joined with ", ", RFC 9110 5.3)."""

    def get(self, key: str, default: Any = None) -> Any:
        return dict.get(self, key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return dict.__getitem__(self, key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and dict.__contains__(self, key.lower())


class Request:
    """One request, its body already read. Handlers may keep per-request values in it (`req[key]`)."""

    __slots__ = ("_conn", "_state", "body", "headers", "keep_alive", "method", "path", "query_string", "too_large")

    def __init__(self, method: str, path: str, query_string: str, headers: Headers, body: bytes,
                 keep_alive: bool, too_large: bool = False) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.too_large = too_large
        self._state: dict[str, Any] | None = None
        self._conn: _Connection | None = None  # set while the server answers it

    @property
    def path_qs(self) -> str:
        return f"{self.path}?{self.query_string}" if self.query_string else self.path

    @property
    def query(self) -> dict[str, str]:
        """First value of each query parameter."""
        out: dict[str, str] = {}
        for key, value in parse_qsl(self.query_string, keep_blank_values=True):
            out.setdefault(key, value)
        return out

    @property
    def can_read_body(self) -> bool:
        return bool(self.body)

    async def read(self) -> bytes:
        return self.body

    def get(self, key: str, default: Any = None) -> Any:
        return default if self._state is None else self._state.get(key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        if self._state is None:
            self._state = {}
        self._state[key] = value


class Response:
    """A whole answer, written with its head in one `transport.write`."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, body: bytes = b"", status: int = 200, headers: Mapping[str, str] | None = None,
                 content_type: str | None = None) -> None:
        self.body = body
        self.status = status
        self.headers: dict[str, str] = dict(headers) if headers else {}
        if content_type is not None:
            self.headers["Content-Type"] = content_type
        elif not any(k.lower() == "content-type" for k in self.headers):
            self.headers["Content-Type"] = "application/octet-stream"


def json_response(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(_encode_json(obj), status, headers, content_type="application/json")


class StreamResponse:
    """An answer written as it is produced (chunked transfer encoding): `prepare`, `write`, `write_eof`.
    `write` raises ConnectionResetError once the client has gone away."""

    def __init__(self, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.headers: dict[str, str] = dict(headers) if headers else {}
        self._conn: _Connection | None = None
        self.eof_written = False

    @property
    def prepared(self) -> bool:
        return self._conn is not None

    async def prepare(self, request: Request) -> None:
        conn = request._conn
        if conn is None:
            raise RuntimeError("prepare() of a request this server is not answering")
        if conn.closed:
            raise ConnectionResetError("the client went away")
        self._conn = conn
        conn.streaming = True
        headers = dict(self.headers)
        headers["Transfer-Encoding"] = "chunked"
        conn.write(_head(self.status, headers, conn.close_after(request)))

    async def write(self, data: bytes) -> None:
        conn = self._conn
        if conn is None:
            raise RuntimeError("write() before prepare()")
        if not data:
            return
        if conn.closed:
            raise ConnectionResetError("the client went away")
        conn.write(b"%x\r\n%b\r\n" % (len(data), data))
        await conn.drain()

    async def write_eof(self) -> None:
        conn = self._conn
        if conn is None or self.eof_written:
            return
        self.eof_written = True
        if conn.closed:
            raise ConnectionResetError("the client went away")
        conn.write(b"0\r\n\r\n")


AnyResponse = Response | StreamResponse
Handler = Callable[[Request], Awaitable[AnyResponse]]

class _DateHeader:
    """`Date: ...` formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = b"Date: " + email.utils.formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._value


_DATE = _DateHeader()


def _head(status: int, headers: Mapping[str, str], close: bool, length: int | None = None) -> bytes:
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, "Unknown").encode()), _DATE.get()]
    for key, value in headers.items():
        parts.append(f"{key}: {value}\r\n".encode("latin-1"))
    if length is not None:
        parts.append(b"Content-Length: %d\r\n" % length)
    parts.append(b"Connection: close\r\n\r\n" if close else b"\r\n")
    return b"".join(parts)


def _error_json(status: int, message: str) -> bytes:
    err_type = "invalid_request_error" if status < 500 else "server_error"
    return _encode_json({"error": {"message": message, "type": err_type, "param": None, "code": status}})


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.task: asyncio.Task[None] | None = None
        self._pending: deque[Request] = deque()
        self._url: list[bytes] = []
        self._headers = Headers()
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._too_large = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._close_when_done = False
        self.streaming = False  # the answer in progress has begun as a stream

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass
        self.server._connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()  # the client went away: so does its request
        self._wake_writer()

    def data_received(self, data: bytes) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not supported")
            return
        except httptools.HttpParserError as exc:
            if self._head_bytes > MAX_HEAD_BYTES:  # raised by _count_head, wrapped by the parser
                self._refuse(431, f"request line and headers exceed {MAX_HEAD_BYTES} bytes")
            else:
                self._refuse(400, f"malformed HTTP request: {exc}")
            return
        if self.task is None and not self.closed:
            # Part of a request, then silence: the idle timeout still applies.
            self._arm_idle()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = []
        self._headers = Headers()
        self._head_bytes = 0
        self._body = []
        self._body_bytes = 0
        self._too_large = False

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = self._headers.get(key)
        dict.__setitem__(self._headers, key, text if old is None else f"{old}, {text}")

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.server.max_body_bytes:
            self._too_large = True
        elif self._headers.get("expect", "").lower() == "100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._too_large:
            return
        self._body_bytes += len(body)
        if self._body_bytes > self.server.max_body_bytes:
            self._too_large = True
            self._body = []
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        url = httptools.parse_url(b"".join(self._url))
        path = url.path.decode("latin-1") if url.path else "/"
        query = url.query.decode("latin-1") if url.query else ""
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = Request(self.parser.get_method().decode("latin-1"), path, query, self._headers, body,
                          self.parser.should_keep_alive(), self._too_large)
        if self.task is None:
            self._start(request)
        else:  # pipelined: answered after the one in progress; read no further meanwhile
            self._pending.append(request)
            assert self.transport is not None
            self.transport.pause_reading()

    # answering

    def _start(self, request: Request) -> None:
        self.streaming = False
        self.task = asyncio.get_running_loop().create_task(self._answer(request))
        self.server._active += 1
        self.server._idle_event.clear()

    async def _answer(self, request: Request) -> None:
        keep = False
        try:
            keep = await self._respond(request)
        finally:
            self.task = None
            self.server._request_done()
            if not keep:
                self._close()
            elif self._pending:
                self._start(self._pending.popleft())
            else:
                assert self.transport is not None
                self.transport.resume_reading()
                self._arm_idle()

    async def _respond(self, request: Request) -> bool:
        """Run the handler and write its answer; whether the connection stays open."""
        server = self.server
        if request.too_large:
            self.write(_head(413, {"Content-Type": "application/json"}, True, len(body := _error_json(
                413, f"request body exceeds {server.max_body_bytes} bytes"))) + body)
            return False
        request._conn = self
        try:
            response = await server.handler(request)
        except Exception:
            log.exception("error answering %s %s", request.method, request.path)
            if self.streaming:  # part of an answer is out: all the client can learn is the cut
                return False
            response = Response(_error_json(500, "internal error in the router"), 500,
                                content_type="application/json")
        if self.closed:
            return False
        if isinstance(response, StreamResponse):
            if not response.prepared:
                raise RuntimeError("a handler returned a StreamResponse it did not prepare")
            if not response.eof_written:  # as aiohttp does: returning the stream ends it
                response.eof_written = True
                self.write(b"0\r\n\r\n")
            return not self.close_after(request)
        close = self.close_after(request)
        body = b"" if request.method == "HEAD" else response.body
        self.write(_head(response.status, response.headers, close, len(response.body)) + body)
        return not close

    def close_after(self, request: Request) -> bool:
        return not request.keep_alive or self._close_when_done or self.server.close_connections()

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    async def drain(self) -> None:
        if not self._write_paused or self.closed:
            return
        waiter = self._drain_waiter
        if waiter is None or waiter.done():
            waiter = self._drain_waiter = asyncio.get_running_loop().create_future()
        await waiter
        if self.closed:
            raise ConnectionResetError("the client went away")

    def _wake_writer(self) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _count_head(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge

    def _refuse(self, status: int, message: str) -> None:
        if self.task is None and not self.closed:  # else an answer is in progress: just close
            body = _error_json(status, message)
            self.write(_head(status, {"Content-Type": "application/json"}, True, len(body)) + body)
        self._close()

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(self.server.keepalive_timeout_s, self._close)

    def _close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def close_if_idle(self) -> None:
        self._close_when_done = True
        if self.task is None:
            self._close()


class _HeadTooLarge(Exception):
    """Raised in a parser callback to stop parsing (httptools re-raises it as HttpParserCallbackError)."""


class HttpServer:
    """Serves `handler` on one listening socket."""

    def __init__(self, handler: Handler, max_body_bytes: int, keepalive_timeout_s: float = 75.0,
                 close_connections: Callable[[], bool] = lambda: False) -> None:
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.keepalive_timeout_s = keepalive_timeout_s
        self.close_connections = close_connections
        self._connections: set[_Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._active = 0  # connections answering a request
        self._idle_event = asyncio.Event()
        self._idle_event.set()

    async def start(self, host: str, port: int, backlog: int = 1024) -> int:
        """Listen; the port bound (port 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port, reuse_address=True,
                                                backlog=backlog)
        sockets: Iterable[Any] = self._server.sockets or ()
        return int(next(iter(sockets)).getsockname()[1])

    def _request_done(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._idle_event.set()

    async def shutdown(self, timeout_s: float) -> None:
        """Stop listening, close idle connections, give answers in progress up to `timeout_s`."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self._connections):
            conn.close_if_idle()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle_event.wait(), timeout_s)
        tasks = [c.task for c in self._connections if c.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for conn in list(self._connections):
            conn._close()
