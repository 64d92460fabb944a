"""Errors of the gRPC front end: the HTTP server's errors, as gRPC status codes.

Every refusal is first the APIError the HTTP route would answer (same message, param and code,
built by the same functions), then a status: the code from its HTTP status, the message as it
is, and `param` / `code` in the trailing metadata. So a client sees the same words over both.
"""

from __future__ import annotations

from typing import NoReturn

import grpc
import grpc.aio
from pydantic import ValidationError

from radixserve.errors import EngineError
from radixserve.server.errors import APIError, _validation_param
from radixserve.server.streaming import engine_api_error

# HTTP status -> gRPC status code (the mapping of grpc-gateway and Google's API design guide).
GRPC_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

UNAUTHENTICATED = APIError(401, "invalid or missing API key; send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")


def validation_api_error(e: ValidationError) -> APIError:
    """A request body pydantic refused, worded as the HTTP server's 400 for the same body."""
    errors = e.errors()
    if not errors:
        return APIError(400, "invalid request", code="invalid_value")
    param = _validation_param(tuple(errors[0]["loc"]))
    message = errors[0]["msg"]
    if param:
        message = f"invalid value for {param!r}: {message}"
    return APIError(400, message, param=param, code="invalid_value")


def to_api_error(e: Exception) -> APIError:
    if isinstance(e, APIError):
        return e
    if isinstance(e, EngineError):  # invalid request 400, queue full 429, unavailable 503, timeout 504
        return engine_api_error(e)
    if isinstance(e, ValidationError):
        return validation_api_error(e)
    return APIError(500, f"internal error: {type(e).__name__}: {e}")


def grpc_code(e: APIError) -> grpc.StatusCode:
    return GRPC_CODES.get(e.status_code, grpc.StatusCode.INTERNAL if e.status_code >= 500
                          else grpc.StatusCode.INVALID_ARGUMENT)


def trailing_metadata(e: APIError) -> tuple[tuple[str, str], ...]:
    return tuple((key, value) for key, value in (("param", e.param), ("code", e.code)) if value)


async def abort(context: grpc.aio.ServicerContext[object, object], e: Exception) -> NoReturn:
    """End the call with `e`'s status (raises, as ServicerContext.abort does)."""
    err = to_api_error(e)
    await context.abort(grpc_code(err), err.message, trailing_metadata(err))
