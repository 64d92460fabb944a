"""The router's upstream HTTP/1.1 pool against scripted loopback servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from radixserve.router.upstream import ConnectFailed, ConnectionBroken, UpstreamPool

from .conftest import free_port

Reply = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Scripted:
    """A server that reads each request's head and body, then lets `reply` answer it; a
    client that drops the connection sets `closed_by_peer`."""

    reply: Reply
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    closed_by_peer: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                await self.reply(head + body, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            self.closed_by_peer.set()
        finally:
            writer.close()


MakeScripted = Callable[[Reply], Awaitable[Scripted]]


@pytest.fixture
async def scripted() -> AsyncIterator[MakeScripted]:
    servers: list[asyncio.Server] = []

    async def make(reply: Reply) -> Scripted:
        s = Scripted(reply)
        server = await asyncio.start_server(s.handle, "127.0.0.1", 0)
        servers.append(server)
        s.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return s

    yield make
    for server in servers:
        server.close()


def _ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body), extra, body)


async def _answer(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(_ok(b'{"echo": %d}' % len(request)))
    await writer.drain()


async def test_request_is_sent_whole_and_the_connection_is_kept_alive(scripted: MakeScripted) -> None:
    server = await scripted(_answer)
    pool = UpstreamPool(request_timeout_s=5, connect_timeout_s=5, keepalive_timeout_s=4)
    for i in range(3):
        resp = await pool.request("POST", server.url, "/v1/completions", {"X-Request-Id": f"r{i}"}, b'{"a": 1}')
        assert resp.status == 200 and resp.header("content-type") == "application/json"
        assert (await resp.read()).startswith(b'{"echo": ')
        assert resp.at_eof()
        resp.release()
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v1/completions HTTP/1.1\r\n")
    port = server.url.rsplit(":", 1)[1].encode()
    assert b"Host: 127.0.0.1:" + port + b"\r\n" in first
    assert b"X-Request-Id: r0\r\n" in first and b"Content-Length: 8\r\n" in first
    assert first.endswith(b'\r\n\r\n{"a": 1}')
    pool.close()


async def test_chunked_stream_arrives_piece_by_piece(scripted: MakeScripted) -> None:
    gate = asyncio.Event()

    async def stream(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"7\r\ndata: 1\r\n")
        await writer.drain()
        await gate.wait()
        writer.write(b"7\r\ndata: 2\r\n0\r\n\r\n")
        await writer.drain()

    server = await scripted(stream)
    pool = UpstreamPool(5, 5, 4)
    resp = await pool.request("POST", server.url, "/v1/chat/completions", {}, b"{}")
    assert resp.header("Content-Type") == "text/event-stream"
    assert await resp.readany() == b"data: 1"  # before the rest exists
    assert not resp.at_eof()
    gate.set()
    assert await resp.readany() == b"data: 2"
    assert await resp.readany() == b""
    resp.release()
    again = await pool.request("GET", server.url, "/x", {}, None)  # the same connection, reused
    assert await again.read() == b"data: 1data: 2" and server.connections == 1
    again.release()
    pool.close()


async def test_connection_close_is_honoured(scripted: MakeScripted) -> None:
    async def close_after(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_ok(b"{}", b"Connection: close\r\n"))
        await writer.drain()
        writer.close()

    server = await scripted(close_after)
    pool = UpstreamPool(5, 5, 4)
    for _ in range(2):
        resp = await pool.request("GET", server.url, "/", {}, None)
        assert await resp.read() == b"{}" and not resp.keep_alive
        resp.release()
    assert server.connections == 2
    pool.close()


async def test_cut_body_raises_broken_and_refused_connect_raises_connect_failed(scripted: MakeScripted) -> None:
    async def cut(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.close()

    server = await scripted(cut)
    pool = UpstreamPool(5, 5, 4)
    resp = await pool.request("GET", server.url, "/", {}, None)
    with pytest.raises(ConnectionBroken):
        await resp.read()
    resp.close()

    async def no_head(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    silent = await scripted(no_head)
    with pytest.raises(ConnectionBroken):
        await pool.request("GET", silent.url, "/", {}, None)

    async def garbage(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()

    bad = await scripted(garbage)
    with pytest.raises(ConnectionBroken, match="malformed"):
        await pool.request("GET", bad.url, "/", {}, None)

    with pytest.raises(ConnectFailed):
        await pool.request("GET", f"http://127.0.0.1:{free_port()}", "/", {}, None)
    pool.close()


async def test_deadline_covers_head_and_body_and_drops_the_connection(scripted: MakeScripted) -> None:
    async def stall(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if b"/slow-body" in request:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            await writer.drain()
        await reader.read()  # returns when the client drops the connection

    server = await scripted(stall)
    pool = UpstreamPool(request_timeout_s=0.3, connect_timeout_s=5, keepalive_timeout_s=4)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(TimeoutError):
        await pool.request("GET", server.url, "/slow-head", {}, None)
    assert 0.25 < loop.time() - t0 < 2
    await asyncio.wait_for(server.closed_by_peer.wait(), 5)  # the worker sees the request dropped

    resp = await pool.request("GET", server.url, "/slow-body", {}, None)
    assert await resp.readany() == b"abc"
    with pytest.raises(TimeoutError):
        await resp.readany()
    resp.close()
    pool.close()


async def test_closing_an_unfinished_response_disconnects_the_worker(scripted: MakeScripted) -> None:
    async def endless(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)

    server = await scripted(endless)
    pool = UpstreamPool(5, 5, 4)
    resp = await pool.request("GET", server.url, "/", {}, None)
    assert await resp.readany()
    resp.release()  # not at its end: released means closed
    await asyncio.wait_for(server.closed_by_peer.wait(), 5)
    pool.close()


async def test_idle_connections_past_keepalive_are_not_reused(scripted: MakeScripted) -> None:
    server = await scripted(_answer)
    pool = UpstreamPool(5, 5, keepalive_timeout_s=0.05)
    for _ in range(2):
        resp = await pool.request("GET", server.url, "/", {}, None)
        await resp.read()
        resp.release()
        await asyncio.sleep(0.1)
    assert server.connections == 2
    pool.close()


async def test_large_body_survives_paused_reading(scripted: MakeScripted) -> None:
    payload = bytes(range(256)) * (3 * 4096 + 7)  # about 3 MiB: over the high-water mark

    async def big(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_ok(payload))
        await writer.drain()

    server = await scripted(big)
    pool = UpstreamPool(10, 5, 4)
    resp = await pool.request("GET", server.url, "/", {}, None)
    await asyncio.sleep(0.2)  # let it buffer up to the mark and pause
    assert await resp.read() == payload
    resp.release()
    resp2 = await pool.request("GET", server.url, "/", {}, None)  # the resumed connection is reusable
    assert await resp2.read() == payload and server.connections == 1
    resp2.release()
    pool.close()
