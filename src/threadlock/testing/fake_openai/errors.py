"""OpenAI-shaped errors: every error answer the fake sends is built here.

A handler raises :class:`APIError`; the server turns it into an HTTP answer with OpenAI's
``{"error": {"message", "type", "param", "code"}}`` body. The three errors caused by concurrent
use carry a ``kind``, which the server counts in ``concurrency_errors_by_kind``.
"""

from __future__ import annotations

from typing import Any, Final

Json = dict[str, Any]

CONVERSATION_LOCKED_MESSAGE: Final = (
    "Another process is currently operating on this conversation. Please retry in a few seconds."
)

_SERVER_ERROR_MESSAGE: Final = (
    "The server had an error processing your request. Sorry about that! You can retry your "
    "request, or contact us through our help center at help.openai.com if you keep seeing this "
    "error."
)


class APIError(Exception):
    """An OpenAI-shaped error answer, raised inside a handler."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type_ = type_
        self.param = param
        self.code = code
        self.kind = kind

    def body(self) -> Json:
        return _body(self.message, self.type_, self.param, self.code)


class ClientTimeoutError(Exception):
    """The client's read timeout elapsed before the answer was ready."""


def _body(message: str, type_: str, param: str | None, code: str | None) -> Json:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def not_found(kind: str, object_id: str) -> APIError:
    """The Assistants API's 404 (``No thread found with id '...'.``)."""
    return APIError(404, f"No {kind} found with id '{object_id}'.")


def not_found_with_id(kind: str, object_id: str) -> APIError:
    """The Responses/Conversations API's 404 (``Conversation with id '...' not found.``)."""
    return APIError(404, f"{kind} with id '{object_id}' not found.")


def missing(param: str) -> APIError:
    return APIError(400, f"Missing required parameter: '{param}'.", param=param)


def invalid_type(param: str, expected: str) -> APIError:
    return APIError(400, f"Invalid type for '{param}': expected {expected}.", param=param)


def invalid_value(param: str, value: object, supported: tuple[str, str]) -> APIError:
    first, second = supported
    return APIError(
        400,
        f"Invalid value: '{value}'. Supported values are: '{first}' and '{second}'.",
        param=param,
    )


def streaming_unsupported(what: str = "streaming (stream=true)") -> APIError:
    return APIError(400, f"FakeOpenAI does not support {what}.", param="stream")


def conversation_locked() -> APIError:
    """A conversation already has a response being generated."""
    return APIError(
        400,
        CONVERSATION_LOCKED_MESSAGE,
        param="conversation",
        code="conversation_locked",
        kind="conversation_locked",
    )


def message_while_run_active(thread_id: str, run_id: str) -> APIError:
    return APIError(
        400,
        f"Can't add messages to {thread_id} while a run {run_id} is active.",
        kind="message_while_run_active",
    )


def run_while_run_active(thread_id: str, run_id: str) -> APIError:
    return APIError(
        400,
        f"Thread {thread_id} already has an active run {run_id}.",
        kind="run_while_run_active",
    )


def fault_body(status: int) -> Json:
    """OpenAI's body for an injected HTTP ``status``."""
    if status == 429:
        return _body(
            "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1. "
            "Please try again in 20ms. Visit https://platform.openai.com/account/rate-limits "
            "to learn more.",
            "requests",
            None,
            "rate_limit_exceeded",
        )
    if status == 503:
        return _body(
            "The engine is currently overloaded, please try again later.",
            "server_error",
            None,
            None,
        )
    if status >= 500:
        return _body(_SERVER_ERROR_MESSAGE, "server_error", None, None)
    return _body(f"Injected error (HTTP {status}).", "invalid_request_error", None, None)
