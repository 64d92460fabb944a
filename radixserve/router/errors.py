"""OpenAI-shaped error responses: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import msgspec

from radixserve.router.httpd import Response

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class _ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: int | str | None


class _Error(msgspec.Struct):
    error: _ErrorDetail


_encoder = msgspec.json.Encoder()


def error_body(status: int, message: str, err_type: str | None = None, param: str | None = None,
               code: str | None = None) -> bytes:
    """`code` defaults to the HTTP status; OpenAI's own codes (e.g. rate_limit_exceeded) are strings."""
    detail = _ErrorDetail(message, err_type or _TYPES.get(status, "server_error"), param, code or status)
    return _encoder.encode(_Error(detail))


def error_response(status: int, message: str, err_type: str | None = None, param: str | None = None,
                   headers: dict[str, str] | None = None, code: str | None = None) -> Response:
    return Response(body=error_body(status, message, err_type, param, code), status=status,
                        content_type="application/json", headers=headers)
