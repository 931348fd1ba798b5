"""The service errors the emulator answers with, shaped like Personalize's (code, HTTP status, message)."""

from __future__ import annotations

import enum


class Outcome(enum.StrEnum):
    """How a call ended, as counted in ``GET /_emulator/stats``."""

    OK = "ok"
    INVALID_INPUT = "invalid_input"
    NOT_FOUND = "not_found"
    THROTTLED = "throttled"
    SERVER_ERROR = "server_error"
    UNAUTHORIZED = "unauthorized"


class ApiError(Exception):
    """An error answer: HTTP ``status``, AWS error ``code`` (the ``x-amzn-ErrorType`` header) and ``message``."""

    def __init__(self, status: int, code: str, message: str, outcome: Outcome) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.outcome = outcome


def invalid_input(message: str) -> ApiError:
    return ApiError(400, "InvalidInputException", message, Outcome.INVALID_INPUT)


def not_found(message: str) -> ApiError:
    return ApiError(404, "ResourceNotFoundException", message, Outcome.NOT_FOUND)


def throttled(message: str = "Rate exceeded") -> ApiError:
    # botocore retries ThrottlingException in every retry mode (legacy _retry.json and standard/adaptive).
    return ApiError(400, "ThrottlingException", message, Outcome.THROTTLED)


def server_error(status: int) -> ApiError:
    if status == 503:
        return ApiError(503, "ServiceUnavailable", "Service unavailable (injected fault)", Outcome.SERVER_ERROR)
    return ApiError(500, "InternalServerError", "Internal server error (injected fault)", Outcome.SERVER_ERROR)


def missing_authentication() -> ApiError:
    # What AWS JSON services answer to an unsigned request.
    return ApiError(403, "MissingAuthenticationTokenException", "Missing Authentication Token", Outcome.UNAUTHORIZED)


def incomplete_signature(message: str) -> ApiError:
    return ApiError(400, "IncompleteSignatureException", message, Outcome.UNAUTHORIZED)


def unknown_operation(target: str | None) -> ApiError:
    return ApiError(400, "UnknownOperationException", f"unknown operation {target!r}", Outcome.INVALID_INPUT)
