"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the matching status."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from radixserve.errors import EngineError, InvalidRequestError, QueueFullError, UnavailableError

# status -> OpenAI error type
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
}


class APIError(Exception):
    def __init__(self, status_code: int, message: str, param: str | None = None, code: str | None = None,
                 error_type: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.param = param
        self.code = code
        self.error_type = error_type or ERROR_TYPES.get(status_code, "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status_code == 401 else None
        return JSONResponse(self.body(), status_code=self.status_code, headers=headers)


# Engine errors -> HTTP status.
ENGINE_STATUS: dict[type[EngineError], int] = {InvalidRequestError: 400, QueueFullError: 429, UnavailableError: 503}


def api_error(e: EngineError) -> APIError:
    status = next((code for cls, code in ENGINE_STATUS.items() if isinstance(e, cls)), 500)
    return APIError(status, e.message, param=e.param, code=e.code)


# Union-member tags pydantic puts in an error's location ("prompt.list[int].0"): not fields.
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


def _validation_param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p != "body" and not (isinstance(p, str) and (
        p in _TYPE_TAGS or any(c in p for c in "[]-(),")))]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(EngineError)
    async def _engine_error(_: Request, exc: EngineError) -> JSONResponse:
        return api_error(exc).response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI answers 422 by default; OpenAI (and its client) expect 400 for a malformed request.
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return APIError(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}"
                            .rstrip(": "), code="invalid_json").response()
        param = _validation_param(tuple(first.get("loc", ())))
        message = first.get("msg", "invalid request")
        if param:
            message = f"invalid value for {param!r}: {message}"
        return APIError(400, message, param=param, code="invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":  # no such route (the routes' own 404s say more)
            message = f"no route {request.method} {request.url.path} on this server (GET /openapi.json lists them)"
        if exc.status_code == 400 and message == "There was an error parsing the body":
            # FastAPI's answer to a body json.loads cannot read: invalid UTF-8, nesting too deep.
            code, message = "invalid_json", "the request body is not valid JSON (invalid UTF-8 or nested too deeply)"
        resp = APIError(exc.status_code, message, code=code).response()
        resp.headers.update(exc.headers or {})  # 405 carries Allow
        return resp

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}").response()
