"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}, with the right status."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from ..errors import GlmflashError
from ..options import api_names

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}


OPENAI_NAMES = api_names()  # library -> API field


class ApiError(Exception):
    """An error the API answers with, raised anywhere in a request."""

    def __init__(self, status: int, message: str, *, code: str, param: str | None = None, headers=None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    @classmethod
    def from_library(cls, exc: GlmflashError) -> ApiError:
        param, message = exc.param, exc.message
        if exc.param in OPENAI_NAMES:
            param = OPENAI_NAMES[exc.param]
            message = message.replace(exc.param, param)
        return cls(exc.status, message, code=exc.code, param=param)


def error_body(status: int, message: str, code: str, param: str | None = None) -> dict:
    return {
        "error": {"message": message, "type": TYPES.get(status, "server_error"), "param": param, "code": code}
    }


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.status, exc.message, exc.code, exc.param), status_code=exc.status, headers=exc.headers
    )
