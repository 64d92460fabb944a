"""One access-log line per HTTP request, request ids, and error counting: an ASGI middleware.

Every request gets an id: the client's `X-Request-Id` header when it is a sane token (printable
ASCII, at most 128 characters), else a fresh one; the response always carries it back in
`X-Request-Id`. On the generation routes that take a `rid` (`/v1/chat/completions`,
`/v1/completions`, `/generate`) a client's id becomes the request's `rid` unless the body names
one, so the scheduler, `/abort_request` and the log speak of the same id.

When the response is done (or the client is gone) one line is logged on `radixserve.access`:

    request id=... method=POST route=/v1/chat/completions status=200 prompt_tokens=12 cached_tokens=0
    completion_tokens=20 ttft=0.041 duration=0.310 client=127.0.0.1

`ttft` is from the request's arrival to its first generated token (`-` when nothing was
generated); the token counts and the first-token time come from the TokenizerManager through a
`RequestRecord` (radixserve/metrics.py) that this middleware puts in a context variable. A
response cut short by a client that went away is logged with status 499. With `--log-requests`
a second line carries the request and response bodies, each cut to `PAYLOAD_LOG_BYTES`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from radixserve.metrics import CURRENT_REQUEST, RequestRecord, TokenizerMetrics

logger = logging.getLogger("radixserve.access")

REQUEST_ID_HEADER = b"x-request-id"
MAX_REQUEST_ID_LEN = 128
PAYLOAD_LOG_BYTES = 2048
# Routes whose JSON body takes a `rid`; a client's X-Request-Id is put there.
RID_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/generate"})
# A body is rewritten only up to this size (larger ones keep the builder's rid).
MAX_REWRITE_BYTES = 32 << 20
CLIENT_CLOSED = 499
# Probes and scrapers: their lines are logged at debug level, not to drown the requests.
QUIET_ROUTES = frozenset({"/health", "/metrics"})


def valid_request_id(value: str) -> bool:
    return 0 < len(value) <= MAX_REQUEST_ID_LEN and all(33 <= ord(c) < 127 for c in value)


def new_request_id() -> str:
    return uuid.uuid4().hex


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            try:
                return str(value.decode("latin-1"))
            except UnicodeDecodeError:
                return None
    return None


def _truncate(data: bytes, limit: int = PAYLOAD_LOG_BYTES) -> str:
    text = data[:limit].decode("utf-8", errors="replace")
    return json.dumps(text + ("...(truncated)" if len(data) > limit else ""), ensure_ascii=False)


class _Exchange:
    """One request's response as it goes out: its status, whether it completed, and (with
    --log-requests) the first bytes of both bodies."""

    def __init__(self, request_id: str, receive: Receive, send: Send, capture: bool) -> None:
        self.request_id = request_id
        self._receive, self._send, self.capture = receive, send, capture
        self.status = 0
        self.finished = False
        self.request_body = bytearray()
        self.response_body = bytearray()

    async def receive(self) -> Message:
        message = await self._receive()
        if self.capture and message["type"] == "http.request" and len(self.request_body) <= PAYLOAD_LOG_BYTES:
            self.request_body.extend(message.get("body", b""))
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER]
            headers.append((REQUEST_ID_HEADER, self.request_id.encode("latin-1")))
            message = {**message, "headers": headers}
        elif message["type"] == "http.response.body":
            if self.capture and len(self.response_body) <= PAYLOAD_LOG_BYTES:
                self.response_body.extend(message.get("body", b""))
            if not message.get("more_body", False):
                self.finished = True
        await self._send(message)


class AccessLog:
    """Outermost middleware of the server app (see `build_app`)."""

    def __init__(self, app: ASGIApp, metrics: TokenizerMetrics | None = None, log_requests: bool = False) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        given = _header(scope, REQUEST_ID_HEADER)
        request_id = given if given is not None and valid_request_id(given) else new_request_id()
        record = RequestRecord(request_id=request_id, started=started)
        scope.setdefault("state", {})["request_id"] = request_id
        if request_id == given and scope["method"] == "POST" and scope["path"] in RID_ROUTES:
            receive = await _with_rid(scope, receive, request_id)
        ex = _Exchange(request_id, receive, send, self.log_requests)
        token = CURRENT_REQUEST.set(record)
        try:
            await self.app(scope, ex.receive, ex.send)
        except BaseException:
            ex.status = ex.status or 500
            raise
        finally:
            CURRENT_REQUEST.reset(token)
            if not ex.finished and ex.status < 400:
                ex.status = CLIENT_CLOSED  # the response was cut short (client gone, or cancelled)
            self._log(scope, record, ex, time.monotonic() - started)

    def _log(self, scope: Scope, record: RequestRecord, ex: _Exchange, duration: float) -> None:
        if self.metrics is not None and ex.status >= 400:
            self.metrics.error(ex.status)
        ttft = "-" if record.first_token_at is None else f"{record.first_token_at - record.started:.4f}"
        client = scope.get("client")
        level = logging.DEBUG if scope["path"] in QUIET_ROUTES and ex.status < 400 else logging.INFO
        logger.log(level, "request id=%s method=%s route=%s status=%d prompt_tokens=%d cached_tokens=%d "
                    "completion_tokens=%d ttft=%s duration=%.4f client=%s", record.request_id, scope["method"],
                    scope["path"], ex.status, record.prompt_tokens, record.cached_tokens, record.completion_tokens,
                    ttft, duration, client[0] if client else "-")
        if self.log_requests:
            logger.info("request id=%s payload=%s response=%s", record.request_id, _truncate(bytes(ex.request_body)),
                        _truncate(bytes(ex.response_body)))


async def _with_rid(scope: Scope, receive: Receive, request_id: str) -> Receive:
    """A `receive` whose JSON body carries `"rid": request_id` (unless it names a rid already).
    The body is read here; anything after it (the disconnect) still comes from `receive`."""
    length = _header(scope, b"content-length")
    if length is None or not length.isdigit() or int(length) > MAX_REWRITE_BYTES:
        return receive
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return _replay([message], receive)  # the client left while sending
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    try:
        data: Any = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("rid") is None:
        data["rid"] = request_id
        body = json.dumps(data).encode()
        scope["headers"] = [(k, v) for k, v in scope.get("headers", []) if k != b"content-length"] + [
            (b"content-length", str(len(body)).encode())]
    return _replay([{"type": "http.request", "body": body, "more_body": False}], receive)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
