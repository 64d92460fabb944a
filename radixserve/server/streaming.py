"""Client-disconnect handling and server-sent events for the route handlers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from radixserve.errors import EngineError
from radixserve.managers.tokenizer_manager import RequestTimeoutError
from radixserve.server.errors import APIError, api_error

T = TypeVar("T")

SSE_DONE = "data: [DONE]\n\n"


class ClientDisconnected(Exception):
    """The client went away before the answer was ready; nothing is sent back."""


async def _wait_disconnect(request: Request) -> None:
    # The body has been read already, so the next ASGI message can only be the disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request, aw: Awaitable[T]) -> T:
    """Await `aw`, cancelling it (and so aborting its requests) if the client disconnects first."""
    task: asyncio.Future[T] = asyncio.ensure_future(aw)
    watcher: asyncio.Future[Any] = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise ClientDisconnected


def sse(obj: BaseModel | dict[str, Any]) -> str:
    data = obj.model_dump_json(exclude_none=False) if isinstance(obj, BaseModel) else json.dumps(obj)
    return f"data: {data}\n\n"


def sse_response(events: AsyncIterator[str]) -> StreamingResponse:
    """Starlette cancels `events` when the client disconnects; its `finally` aborts the requests."""
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def first_and_rest(request: Request, gen: AsyncGenerator[T, None]) -> tuple[T, AsyncGenerator[T, None]]:
    """Wait for the first item before answering, so a refusal (400, 429) is still a plain HTTP error."""
    try:
        first = await until_disconnect(request, gen.__anext__())
    except BaseException:
        await gen.aclose()
        raise
    return first, gen


def error_event(e: APIError) -> str:
    return sse(e.body())


def timeout_error(e: RequestTimeoutError) -> APIError:
    return APIError(504, e.message, code=e.code, error_type="timeout_error")


def engine_api_error(e: EngineError) -> APIError:
    return timeout_error(e) if isinstance(e, RequestTimeoutError) else api_error(e)


async def chained(first: T, rest: AsyncGenerator[T, None]) -> AsyncIterator[T]:
    yield first
    async for item in rest:
        yield item


async def sse_stream(events: AsyncIterator[str], rest: AsyncGenerator[Any, None]) -> AsyncIterator[str]:
    """`events`, then `data: [DONE]`. An error mid-stream becomes an error event; `rest` (the
    generation) is closed however the stream ends, which aborts its requests on a disconnect."""
    try:
        async for event in events:
            yield event
    except APIError as e:
        yield error_event(e)
    except EngineError as e:  # a timeout (504), a child process that died (503), a refused choice
        yield error_event(engine_api_error(e))
    finally:
        await rest.aclose()
    yield SSE_DONE
