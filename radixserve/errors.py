"""Domain errors of the engine. The server maps them to HTTP statuses (server/errors.py); the
offline Engine raises them as they are (InvalidRequestError is a ValueError)."""

from __future__ import annotations


class EngineError(Exception):
    """A request the engine cannot serve; `param` names the offending field, `code` says why."""

    code = "engine_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequestError(EngineError, ValueError):
    code = "invalid_value"


class QueueFullError(EngineError):
    """The engine cannot take more requests now; retrying later can succeed."""

    code = "queue_full"


class UnavailableError(EngineError):
    """Shutting down, or a process that did not answer."""

    code = "unavailable"


def refusal(code: str, message: str) -> EngineError:
    """The error for a request the scheduler refused with FinishReason(error=code)."""
    if code == QueueFullError.code:
        return QueueFullError(message)
    return InvalidRequestError(message, code=code)
