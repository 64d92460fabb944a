"""The router's HTTP/1.1 server (httpd.py) against raw sockets and aiohttp's client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from radixserve.router.httpd import (
    MAX_HEAD_BYTES,
    AnyResponse,
    HttpServer,
    Request,
    Response,
    StreamResponse,
    json_response,
)

Serve = Callable[..., Awaitable[tuple[HttpServer, int]]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[HttpServer] = []

    async def start(handler: Callable[[Request], Awaitable[AnyResponse]], max_body_bytes: int = 1 << 20,
                    **kw: object) -> tuple[HttpServer, int]:
        server = HttpServer(handler, max_body_bytes, **kw)  # type: ignore[arg-type]
        servers.append(server)
        return server, await server.start("127.0.0.1", 0)

    yield start
    for s in servers:
        await s.shutdown(1.0)


async def echo(request: Request) -> AnyResponse:
    return json_response({"method": request.method, "path": request.path, "query": request.query,
                          "body": request.body.decode(), "auth": request.headers.get("Authorization"),
                          "x": request.headers.get("X-Thing")})


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response off a raw connection (Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if line)}
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    body = b""
    if headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readline()).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    return status, headers, body


async def test_keep_alive_pipelining_answers_in_order(serve: Serve) -> None:
    async def slow_first(request: Request) -> AnyResponse:
        if request.path == "/slow":
            await asyncio.sleep(0.1)
        return await echo(request)

    _, port = await serve(slow_first)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = b'{"a": 1}'
    # Three requests in one write: the first is slow, the answers still come in order.
    writer.write(b"GET /slow?x=1&y=2&x=3 HTTP/1.1\r\nHost: h\r\nX-Thing: one\r\nx-thing: two\r\n\r\n"
                 b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\nAuthorization: Bearer k\r\n\r\n%b"
                 b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                 % (len(body), body))
    answers = [json.loads((await read_response(reader))[2]) for _ in range(3)]
    assert answers[0] == {"method": "GET", "path": "/slow", "query": {"x": "1", "y": "2"}, "body": "",
                          "auth": None, "x": "one, two"}
    assert answers[1]["path"] == "/b" and answers[1]["body"] == '{"a": 1}' and answers[1]["auth"] == "Bearer k"
    assert answers[2]["path"] == "/c" and answers[2]["body"] == "abcde"
    # HTTP/1.0 without keep-alive: answered, then closed.
    writer.write(b"GET /d HTTP/1.0\r\n\r\n")
    status, headers, _ = await read_response(reader)
    assert status == 200 and headers["connection"] == "close"
    assert await reader.read() == b""
    writer.close()


async def test_bad_requests_get_errors_and_the_server_stays_up(serve: Serve) -> None:
    _, port = await serve(echo, max_body_bytes=100)
    cases = [
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 1) + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n" + b"x" * 101, 413),
        # Chunked: no length up front, the limit still holds.
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n" + b"x" * 101 + b"\r\n0\r\n\r\n", 413),
    ]
    for raw, expected in cases:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        status, headers, body = await read_response(reader)
        assert status == expected, raw[:40]
        err = json.loads(body)["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["code"] == expected
        assert headers["connection"] == "close"
        assert await reader.read() == b""  # and the connection is closed
        writer.close()
    async with aiohttp.ClientSession() as http, http.post(f"http://127.0.0.1:{port}/ok", data=b"x" * 100) as r:
        assert r.status == 200 and (await r.json())["body"] == "x" * 100


async def test_expect_100_continue(serve: Serve) -> None:
    _, port = await serve(echo)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /e HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    status, _, body = await read_response(reader)
    assert status == 200 and json.loads(body)["body"] == "hello"
    writer.close()


async def test_handler_errors_and_head(serve: Serve) -> None:
    async def handler(request: Request) -> AnyResponse:
        if request.path == "/boom":
            raise RuntimeError("bug")
        return Response(b"abc", headers={"X-Y": "z"})

    _, port = await serve(handler)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/boom") as r:
            assert r.status == 500 and (await r.json())["error"]["type"] == "server_error"
        async with http.get(f"http://127.0.0.1:{port}/fine") as r:
            assert r.status == 200 and await r.read() == b"abc" and r.headers["X-Y"] == "z"
            assert r.headers["Content-Type"] == "application/octet-stream" and "Date" in r.headers
        async with http.head(f"http://127.0.0.1:{port}/fine") as r:
            assert r.status == 200 and r.headers["Content-Length"] == "3" and await r.read() == b""


async def test_client_disconnect_cancels_the_handler(serve: Serve) -> None:
    cancelled = asyncio.Event()
    stream_cancelled = asyncio.Event()

    async def handler(request: Request) -> AnyResponse:
        if request.path == "/wait":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
        out = StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        try:
            while True:  # the client never reads: back-pressure pauses us, then the close cancels us
                await out.write(b"x" * 65536)
        except asyncio.CancelledError:
            stream_cancelled.set()
            raise

    _, port = await serve(handler)
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /wait HTTP/1.1\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.close()
    await asyncio.wait_for(cancelled.wait(), 5)

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /stream HTTP/1.1\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    await asyncio.sleep(0.2)  # buffers fill up; the handler waits on back-pressure
    assert not stream_cancelled.is_set()
    writer.transport.abort()
    await asyncio.wait_for(stream_cancelled.wait(), 5)


async def test_stream_returned_unfinished_is_ended_and_connection_reused(serve: Serve) -> None:
    async def handler(request: Request) -> AnyResponse:
        out = StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        await out.write(b"data: 1\n\n")
        return out  # no write_eof: the server ends the chunked body

    _, port = await serve(handler)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(2):
        writer.write(b"GET /s HTTP/1.1\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status == 200 and headers["transfer-encoding"] == "chunked" and body == b"data: 1\n\n"
    writer.close()


async def test_draining_closes_connections_and_shutdown_lets_answers_finish(serve: Serve) -> None:
    draining = False
    finished: list[str] = []

    async def handler(request: Request) -> AnyResponse:
        if request.path == "/long":
            await asyncio.sleep(0.3)
        finished.append(request.path)
        return Response(b"done")

    server, port = await serve(handler, close_connections=lambda: draining)
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /a HTTP/1.1\r\n\r\n")
    assert (await read_response(reader))[1].get("connection") is None  # kept alive
    draining = True
    writer.write(b"GET /b HTTP/1.1\r\n\r\n")
    assert (await read_response(reader))[1]["connection"] == "close"
    assert await reader.read() == b""

    long_reader, long_writer = await asyncio.open_connection("127.0.0.1", port)
    long_writer.write(b"GET /long HTTP/1.1\r\n\r\n")
    await asyncio.sleep(0.05)
    await server.shutdown(5.0)
    status, _, body = await read_response(long_reader)  # in flight at shutdown: answered
    assert status == 200 and body == b"done" and finished[-1] == "/long"
    assert await idle_reader.read() == b""  # idle: closed
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)  # no longer listening
    for w in (idle_writer, writer, long_writer):
        w.close()


async def test_shutdown_cancels_what_outlives_the_timeout(serve: Serve) -> None:
    cancelled = asyncio.Event()

    async def handler(request: Request) -> AnyResponse:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Response(b"never")

    server, port = await serve(handler)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\n\r\n")
    await asyncio.sleep(0.05)
    await asyncio.wait_for(server.shutdown(0.1), 5)
    assert cancelled.is_set()
    assert await reader.read() == b""
    writer.close()


async def test_idle_and_stalled_connections_are_closed(serve: Serve) -> None:
    _, port = await serve(echo, keepalive_timeout_s=0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /a HTTP/1.1\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    assert await asyncio.wait_for(reader.read(), 5) == b""  # idle after an answer: closed
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /a HTTP/1.1\r\nHost: h\r\n")  # half a head, then silence
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
