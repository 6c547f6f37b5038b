"""The one error type for input the tutorial refuses (bad media, bad messages, bad parameters)."""

from __future__ import annotations


class RequestError(ValueError):
    """Input we will not process, with the HTTP status the server answers with.

    ``message`` says what went wrong and how to fix it; ``param`` names the
    offending field (OpenAI style, e.g. ``messages[0].content[1].image_url``).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 400,
        param: str | None = None,
        code: str = "invalid_request",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.param = param
        self.code = code

    def with_param(self, param: str) -> RequestError:
        """Set ``param`` when not set yet (callers further out know the field path)."""
        if self.param is None:
            self.param = param
        return self
