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

Loopback traffic never goes through a proxy. AutoDL's ``source
/etc/network_turbo`` sets ``http_proxy`` for the whole shell, and requests,
httpx (the openai SDK) and urllib all send ``http://127.0.0.1:...`` through it
unless ``no_proxy`` says otherwise: the proxy cannot reach our machine's
loopback, so every call fails. The clients here ignore the proxy variables for
a loopback server (:func:`is_loopback`) and keep them for any other host:
:func:`openai_client`, :func:`http_session` (requests) and :func:`urlopen`
(urllib; the launcher's health check).
"""

from __future__ import annotations

import ipaddress
import os
import urllib.request
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import requests
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


def is_loopback(url: str) -> bool:
    """True when ``url``'s host is this machine's loopback (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def http_session(url: str) -> requests.Session:
    """A ``requests.Session`` for the server at ``url``: proxy variables ignored when it is loopback."""
    import requests

    session = requests.Session()
    session.trust_env = not is_loopback(url)  # trust_env=False: no http_proxy / no_proxy lookup
    return session


def urlopen(url: str, timeout: float):
    """``urllib.request.urlopen(url)``, bypassing any proxy from the environment for a loopback ``url``."""
    handlers = [urllib.request.ProxyHandler({})] if is_loopback(url) else []
    return urllib.request.build_opener(*handlers).open(url, timeout=timeout)


def openai_client(url: str | None = None, key: str | None = None, **options) -> OpenAI:
    """The ``openai`` SDK client for the chosen server (``/v1`` added); no automatic retries.

    Retries are off (``max_retries=0``) so a 429 from a full queue shows up
    instead of being retried silently; pass ``max_retries=`` to change it.
    A loopback server is reached directly, whatever ``http_proxy`` says.
    """
    from openai import DefaultHttpxClient, OpenAI

    root = base_url(url)
    options.setdefault("max_retries", 0)
    if is_loopback(root) and "http_client" not in options:
        # The SDK's own httpx defaults (timeouts, connection limits), without the proxy variables.
        options["http_client"] = DefaultHttpxClient(trust_env=False)
    return OpenAI(base_url=f"{root}/v1", api_key=api_key(key) or NO_KEY, **options)


def served_model(client: OpenAI) -> str:
    """The model name the server answers to (the first entry of ``GET /v1/models``)."""
    return client.models.list().data[0].id
