"""The one error type for input the tutorial refuses (bad media, bad messages, bad parameters)."""

from __future__ import annotations

import math
from typing import Any


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


def check_number(name: str, value: Any, low: float, high: float, param: str | None = None) -> float:
    """``value`` as a float when it is a finite number in ``[low, high]``, else a 400 naming ``name``.

    NaN, infinities and JSON numbers too large for a float (``1e400`` parses as
    ``inf``) are refused here, so none of them reaches PIL, PyAV or torch.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{name} must be a number, got {value!r}", param=param or name)
    number = float(value)
    if not math.isfinite(number):
        raise RequestError(f"{name} must be a finite number, got {value!r}", param=param or name)
    if not low <= number <= high:
        raise RequestError(f"{name} must be between {low:g} and {high:g}, got {value!r}", param=param or name)
    return number


def check_int(name: str, value: Any, low: int, high: int, param: str | None = None) -> int:
    """``value`` when it is an integer in ``[low, high]`` (``3.0`` counts), else a 400 naming ``name``."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be an integer, got {value!r}", param=param or name)
    if not low <= value <= high:
        raise RequestError(f"{name} must be between {low} and {high}, got {value}", param=param or name)
    return value


def check_text(text: str, param: str) -> str:
    """``text`` when it can be encoded as UTF-8; lone UTF-16 surrogates (``"\\ud800"`` in JSON) are a 400."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(
            f"{param} contains an unpaired UTF-16 surrogate at position {exc.start}: send valid Unicode text",
            param=param,
        ) from None
    return text
