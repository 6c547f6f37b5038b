"""Which server the tutorial's clients talk to: ``QWEN3VL_BASE_URL`` and ``QWEN3VL_API_KEY``.

    from helpers.client import base_url, openai_client
    client = openai_client()                 # OpenAI SDK pointed at $QWEN3VL_BASE_URL/v1
    client = openai_client("http://10.0.0.5:6006", api_key="class-key")

Every client in the tutorial (the client notebook, the chat UI, ``make bench``,
the original tutorial's scripts) reads these two variables through this
module, so one ``export`` points all of them at another OpenAI-compatible
server: ours, vLLM, or the instructor's machine in a workshop.

- ``QWEN3VL_BASE_URL``: the server's root, e.g. ``http://127.0.0.1:6006``
  (a trailing ``/v1`` is accepted and removed). Unset: ``http://127.0.0.1:6006``.
- ``QWEN3VL_API_KEY``: sent as ``Authorization: Bearer <key>``. It is the same
  variable the server reads for ``--api-key``, so one ``export`` configures both
  ends on one machine. Unset: no key (the SDK gets the placeholder ``EMPTY``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from openai import OpenAI

BASE_URL_ENV = "QWEN3VL_BASE_URL"
API_KEY_ENV = "QWEN3VL_API_KEY"
DEFAULT_BASE_URL = "http://127.0.0.1:6006"
# The openai SDK insists on some key; servers without --api-key ignore it.
NO_KEY = "EMPTY"


def normalize_base_url(url: str) -> str:
    """``http://host:port`` from ``host:port/``, ``.../v1`` or ``.../v1/``; ValueError if not http(s)."""
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{BASE_URL_ENV} must start with http:// or https://, got {url!r}")
    return url


def base_url(url: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The server root: ``url`` if given, else ``$QWEN3VL_BASE_URL``, else ``http://127.0.0.1:6006``."""
    environ = os.environ if environ is None else environ
    chosen = url or environ.get(BASE_URL_ENV, "").strip() or DEFAULT_BASE_URL
    return normalize_base_url(chosen)


def base_url_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """``$QWEN3VL_BASE_URL`` normalised, or None when it is not set (the caller starts its own server)."""
    environ = os.environ if environ is None else environ
    raw = environ.get(BASE_URL_ENV, "").strip()
    return normalize_base_url(raw) if raw else None


def api_key(key: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The API key: ``key`` if given, else ``$QWEN3VL_API_KEY``, else None."""
    environ = os.environ if environ is None else environ
    return key or environ.get(API_KEY_ENV, "").strip() or None


def auth_headers(key: str | None = None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{"Authorization": "Bearer <key>"}`` for ``requests``, or ``{}`` without a key."""
    chosen = api_key(key, environ)
    return {"Authorization": f"Bearer {chosen}"} if chosen else {}


def openai_client(url: str | None = None, key: str | None = None, **options) -> OpenAI:
    """The ``openai`` SDK client for the chosen server (``/v1`` added); no automatic retries.

    Retries are off (``max_retries=0``) so a 429 from a full queue shows up
    instead of being retried silently; pass ``max_retries=`` to change it.
    """
    from openai import OpenAI

    options.setdefault("max_retries", 0)
    return OpenAI(base_url=f"{base_url(url)}/v1", api_key=api_key(key) or NO_KEY, **options)


def served_model(client: OpenAI) -> str:
    """The model name the server answers to (the first entry of ``GET /v1/models``)."""
    return client.models.list().data[0].id
