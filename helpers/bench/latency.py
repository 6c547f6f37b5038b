"""/health latency, idle and while a long generation runs (the server must stay responsive)."""

from __future__ import annotations

import threading
from typing import Any

import requests

from helpers.bench.common import (
    LONG_GENERATION_TOKENS,
    _check,
    _content_of,
    chat_body,
    queue_stats,
    text_messages,
    wait_idle,
)
from helpers.bench.stats import measure_latency
from helpers.client import http_session


def health_latencies(session: requests.Session, base_url: str, n: int) -> list[float]:
    """Seconds of ``n`` sequential ``GET /health`` calls on one keep-alive connection."""
    url = f"{base_url}/health"

    def call() -> None:
        _check(session.get(url, timeout=30))

    return measure_latency(call, n)


def health_while_generating(
    base_url: str,
    n: int,
    messages: list[dict[str, Any]] | None = None,
    max_tokens: int = LONG_GENERATION_TOKENS,
    timeout: float = 120.0,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> tuple[list[float], bool]:
    """``/health`` latencies while a long streamed generation runs.

    ``headers`` (e.g. the API key) go with the chat request and ``extra`` into its
    body (e.g. ``model=`` for vLLM).

    A reader thread starts the stream and keeps reading it; once its first
    content chunk has arrived, this thread sends ``n`` sequential ``/health``
    requests, then tells the reader to hang up. Returns the latencies and
    whether the server still reported a running generation after the last one.
    """
    messages = messages or text_messages()
    first = threading.Event()
    stop = threading.Event()
    failure: list[BaseException] = []

    def reader() -> None:
        try:
            body = chat_body(messages, max_tokens, stream=True, **extra)
            with (
                http_session(base_url) as stream_session,
                _check(
                    stream_session.post(
                        f"{base_url}/v1/chat/completions",
                        json=body,
                        stream=True,
                        timeout=timeout,
                        headers=headers,
                    )
                ) as response,
            ):
                for line in response.iter_lines(chunk_size=None):
                    if stop.is_set() or line == b"data: [DONE]":
                        break
                    if not first.is_set() and _content_of(line):
                        first.set()
        except BaseException as exc:  # reported to the caller
            failure.append(exc)
        finally:
            first.set()  # never leave the caller waiting

    thread = threading.Thread(target=reader, name="bench-long-stream", daemon=True)
    thread.start()
    with http_session(base_url) as session:
        first.wait(timeout)
        if failure:
            raise RuntimeError(f"the long generation failed: {failure[0]}")
        samples = health_latencies(session, base_url, n)
        still_running = (
            queue_stats(_check(session.get(f"{base_url}/health", timeout=30))).get("running", 0) >= 1
        )
        stop.set()
        thread.join(timeout)
        wait_idle(session, base_url, timeout)
    return samples, still_running
