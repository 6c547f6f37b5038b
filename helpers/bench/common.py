"""What every measurement shares: settings of the run, request bodies, HTTP calls, saving results."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from helpers.assets import CAT_PHOTO_PATH
from helpers.chat_ui import data_uri

if TYPE_CHECKING:
    from helpers.engine import Engine


REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "results"
BENCH_PROMPT = "Describe a busy city street on a rainy evening: the people, the lights, the sounds."
IMAGE_PROMPT = "What animal is in this picture? Describe it briefly."
CONCURRENCY = (1, 4, 8)
OVERHEAD_RATIO_GOAL = 0.05
HEALTH_P99_GOAL_MS = 50.0
LONG_GENERATION_TOKENS = 1024  # long enough to outlast the /health burst
# The bench's longest request (the cat photo at full budget + 1024 answer tokens) fits in
# 4096 tokens; a smaller context keeps two copies of the 4B inside 24 GB (see check_two_copies_fit).
BENCH_MAX_MODEL_LEN = 4096
GPU_DECODE_TOKENS = 256


# ---------------------------------------------------------------- requests
def text_messages(prompt: str = BENCH_PROMPT) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}]


def image_messages(path: Path = CAT_PHOTO_PATH, prompt: str = IMAGE_PROMPT) -> list[dict[str, Any]]:
    """One user turn with a picture sent inline as a ``data:`` URI (no file access needed on the server)."""
    uri = data_uri(Path(path).read_bytes(), Path(path).name)
    content = [{"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": prompt}]
    return [{"role": "user", "content": content}]


def chat_body(messages: list[dict[str, Any]], max_tokens: int, **extra: Any) -> dict[str, Any]:
    """A greedy chat-completions request body."""
    return {"model": "bench", "messages": messages, "max_tokens": max_tokens, "temperature": 0, **extra}


def _check(response: requests.Response) -> requests.Response:
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code} from {response.url}: {response.text[:300]}")
    return response


def http_chat(
    session: requests.Session,
    base_url: str,
    messages: list[dict[str, Any]],
    max_tokens: int = 64,
    timeout: float = 300.0,
    **extra: Any,
) -> dict[str, Any]:
    """``POST /v1/chat/completions`` (greedy, not streamed); the response JSON. Raises on non-200."""
    url = f"{base_url}/v1/chat/completions"
    return _check(session.post(url, json=chat_body(messages, max_tokens, **extra), timeout=timeout)).json()


def _content_of(line: bytes) -> str | None:
    """The text an SSE line carries (``None`` when it carries none)."""
    if not line.startswith(b"data: {"):
        return None
    chunk = json.loads(line[6:])
    if "error" in chunk:
        raise RuntimeError(f"error event in the stream: {chunk['error']}")
    choices = chunk.get("choices") or [{}]
    return choices[0].get("delta", {}).get("content") or None


def sse_first_token(
    session: requests.Session,
    base_url: str,
    messages: list[dict[str, Any]],
    max_tokens: int = 64,
    timeout: float = 300.0,
    **extra: Any,
) -> float:
    """Seconds from sending a streamed request to its first SSE chunk with content; then hang up.

    Hanging up stops the generation on the server (it cancels on disconnect);
    call :func:`wait_idle` before the next measurement. ``extra`` goes into the
    request body (e.g. ``model=`` for servers that check it, such as vLLM).
    """
    url = f"{base_url}/v1/chat/completions"
    start = time.perf_counter()
    body = chat_body(messages, max_tokens, stream=True, **extra)
    with _check(session.post(url, json=body, stream=True, timeout=timeout)) as response:
        # chunk_size=None: hand over each HTTP chunk as it arrives (a size would wait to fill it)
        for line in response.iter_lines(chunk_size=None):
            if _content_of(line):
                return time.perf_counter() - start
    raise RuntimeError("the stream ended without any content")


def engine_first_token(engine: Engine, messages: list[dict[str, Any]], max_tokens: int = 64) -> float:
    """Seconds from ``engine.stream_chat`` to its first non-empty piece; the rest is cancelled."""
    start = time.perf_counter()
    stream = engine.stream_chat(messages, max_new_tokens=max_tokens, temperature=0)
    try:
        for piece in stream:
            if piece:
                return time.perf_counter() - start
        raise RuntimeError("the answer was empty")
    finally:
        stream.cancel()
        stream.wait()  # the model is free again before the next measurement


def queue_stats(response: requests.Response) -> dict[str, Any]:
    """The ``queue`` of our server's ``/health``; ``{}`` from servers without one (vLLM's is empty)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body.get("queue", {}) if isinstance(body, dict) else {}


def wait_idle(session: requests.Session, base_url: str, timeout: float = 120.0) -> None:
    """Poll ``/health`` until nothing runs or waits (e.g. after hanging up on a stream).

    Servers that report no queue (vLLM) count as idle at once.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queue = queue_stats(session.get(f"{base_url}/health", timeout=10))
        if not queue.get("running") and not queue.get("waiting"):
            return
        time.sleep(0.02)
    raise RuntimeError(f"the server was still busy after {timeout:.0f} s")


def _log(verbose: bool, message: str) -> None:
    if verbose:
        print(message, flush=True)


def save_results(
    results: dict[str, Any], out_dir: Path | str, name: str, plot: Callable[[dict[str, Any], Path], Any]
) -> dict[str, Any]:
    """Write ``<out_dir>/<name>.json`` and ``<name>.png`` (drawn by ``plot``); return ``results``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(
        json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    plot(results, out / f"{name}.png")
    return results
