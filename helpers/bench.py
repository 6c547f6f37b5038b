"""Measure the model and its API server: HTTP overhead, first token, /health under load, throughput, video.

    python -m helpers.bench                          # the demo model (no GPU needed), ~30 s on 2 CPU cores
    python -m helpers.bench --model demo --repeats 5 --out results/
    python -m helpers.bench --compare vllm           # the same load on our server and on vLLM
    QWEN3VL_MODEL=Qwen/Qwen3-VL-4B-Instruct python -m helpers.bench --repeats 10

One run loads the model in this process **and** starts the API server
(``python -m helpers.server`` through :mod:`helpers.launcher`) with the same
model, warms both up with the same text and image request (so both are in the
same state), then measures each figure several times, prints a table
and writes ``<out>/bench.json`` and ``<out>/bench.png``. The model is
``--model``, else ``QWEN3VL_MODEL``, else ``demo``. Figures are reported,
never asserted: they depend on the machine and on whatever else runs on it.

Side by side (``--compare vllm`` starts vLLM with the same settings through
:mod:`helpers.vllm_server`; ``--compare-base-url URL`` uses any running
OpenAI-compatible server): instead of the figures below, the same greedy
load (64 tokens, concurrency 1, 4, 8 and 16, levels interleaved so both
servers see the same machine) goes to our server and to the other one; it
prints requests/s, p50/p99 latency and their ratio, and writes
``<out>/compare.json`` (``targets``, ``levels`` with one summary per server,
``startup_s``, ``model``, ``max_tokens``) and ``<out>/compare.png``.

The measuring functions (``percentile``, ``measure_latency``, ``http_chat``,
``sse_first_token``, ``health_latencies``, ``health_while_generating``,
``concurrency_run``, ``video_decode_speed``, ``gpu_decode``) are small and
reusable: notebook 05 and the tests call them on their own.

Keys of ``bench.json`` (times in seconds unless the name says ``_ms``;
``null`` where a figure does not apply, e.g. GPU figures on a CPU):

- ``schema_version`` (int, 1), ``created`` (str, ISO 8601 UTC), ``wall_s`` (float, the whole run)
- ``model`` (str), ``demo`` (bool), ``device`` (str, ``cpu`` / ``cuda``), ``dtype`` (str),
  ``weight_bytes`` (int, parameters x bytes per value), ``torch_threads`` (int), ``cpu_count`` (int)
- ``repeats`` (int, repetitions per figure), ``max_tokens`` (int, tokens of the greedy request),
  ``prompt_tokens`` (int, tokens of the fixed text prompt)
- ``latency``: the same greedy request (temperature 0, ``max_tokens``, fixed prompt) in-process
  (``engine.chat``) and over HTTP (``POST /v1/chat/completions``, one keep-alive connection)

  - ``pairs`` (int, ``3 x repeats``: each HTTP call runs right after its in-process twin, so both
    see the same background load), ``in_process_s``, ``http_s`` (float, medians),
    ``overhead_ms`` (float, median of the paired differences HTTP - in-process),
    ``overhead_ratio`` (float, ``overhead / http_s``), ``completion_tokens`` (int),
    ``in_process_samples_s``, ``http_samples_s`` (list of float, every pair)
- ``first_token``: time from sending the request to the first non-empty piece of the answer

  - ``in_process_s`` (float, median, ``engine.stream_chat``), ``sse_s`` (float, median, the first SSE
    chunk with content), ``in_process_samples_s``, ``sse_samples_s`` (list of float)
- ``health``: ``GET /health`` latency, sequential requests on one connection

  - ``requests`` (int, per condition), ``idle_p50_ms``, ``idle_p99_ms`` (float, nothing generating),
    ``busy_p50_ms``, ``busy_p99_ms`` (float, while a long streamed generation runs),
    ``busy_generation_running`` (bool, the server still reported a running generation at the end)
- ``throughput`` (list, one entry per kind and concurrency): ``kind`` (str, ``text`` / ``image``),
  ``concurrency`` (int, client threads), ``requests`` (int), ``wall_s`` (float),
  ``requests_per_s`` (float), ``tokens_per_s`` (float, generated tokens / wall time),
  ``latency_p50_s``, ``latency_max_s`` (float, per request, queueing included)
- ``video_decode``: ``reader`` (str, e.g. ``PyAV 18.1.0``), ``file`` (str), ``fps`` (float, sampling
  rate asked for), ``frames`` (int, frames returned), ``seconds`` (float, median of one
  ``helpers.media.load_video`` call), ``frames_per_s`` (float)
- ``media_memory``: the largest image request and the largest video request the settings allow
  (``max_images_per_request`` pictures, or a clip sampled to ``video_max_frames`` frames, each
  ``max_image_input_pixels`` large; ``--media-pixels`` makes them smaller), each under ``image`` and
  ``video``: ``input_pixels`` (int, per picture or frame), ``pictures`` (int, pictures or frames
  handed to the model), ``prompt_tokens`` (int), ``peak_rss_bytes`` (int, growth of the process's
  peak RSS during ``engine.prepare``; ``null`` where it cannot be read), ``rss_estimate_bytes`` (int,
  ``helpers.costs.image_host_bytes`` / ``video_host_bytes``), ``rss_ratio`` (float, measured /
  estimate), ``peak_vram_bytes`` (int, growth of ``torch.cuda.max_memory_allocated`` while the
  request generates one token), ``vram_estimate_bytes`` (int, its KV cache plus the runtime
  allowance of ``helpers.costs``), ``vram_ratio`` (float), ``vram_skipped`` (str, why the VRAM
  figure is missing on a GPU: the request exceeds the model's context or the free memory;
  each request runs with the context it needs, not the bench's 4096); the VRAM figures are
  ``null`` without CUDA
- ``gpu`` (all ``null`` without CUDA): ``name`` (str), ``peak_vram_bytes`` (int,
  ``torch.cuda.max_memory_allocated`` of the in-process engine), ``decode_tokens`` (int),
  ``decode_tokens_per_s`` (float, greedy, after the first token), ``bandwidth_gb_s`` (float, the
  GPU's memory bandwidth from a small table; ``null`` when unknown), ``bandwidth_fraction`` (float,
  ``decode_weight_bytes x decode_tokens_per_s / bandwidth``: how close decoding is to the limit of
  reading the language model's weights once per token; the vision tower is not read per token)
- ``structured_output``: the cost of grammar-constrained decoding (``response_format``), in process,
  greedy, plain and JSON-schema requests interleaved: ``plain_tokens_per_s``,
  ``schema_tokens_per_s`` (float, medians of completion tokens / request time), ``slowdown``
  (float, ``plain / schema - 1``), ``schema_tokens`` (int, tokens of the last constrained answer),
  ``compile_ms`` (float, the first compilation of the schema), ``cached_compile_ms`` (float, the same
  schema again: a cache hit)
- ``goals``: ``overhead_ratio_max`` (float, 0.05), ``overhead_ok`` (bool),
  ``health_busy_p99_max_ms`` (float, 50), ``health_ok`` (bool)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
from PIL import Image

from helpers.assets import CAT_PHOTO_PATH, IMAGES_DIR, MOVING_CLIP_PATH
from helpers.chat_ui import data_uri
from helpers.config import Settings
from helpers.costs import GpuMemoryStatus, MemoryProbe, NotEnoughGPUMemory, gpu_memory_status
from helpers.display import display_width, pad_to_width

if TYPE_CHECKING:
    from helpers.engine import Engine

REPO_ROOT = Path(__file__).resolve().parent.parent
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

# Memory bandwidth in GB/s. Every substring must appear in torch.cuda.get_device_name(); first match wins.
GPU_BANDWIDTH_GB_S: list[tuple[tuple[str, ...], float]] = [
    (("RTX 4090",), 1008.0),
    (("H100", "PCIE"), 2000.0),
    (("H100", "HBM3"), 3350.0),  # "NVIDIA H100 80GB HBM3" is the SXM card
    (("H100", "SXM"), 3350.0),
    (("H200",), 4800.0),
    (("A100", "80GB"), 2039.0),
    (("L40S",), 864.0),
]


# ------------------------------------------------------------------ statistics
def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between samples (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be between 0 and 100, got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def measure_latency(fn: Callable[[], Any], repeats: int, warmup: int = 0) -> list[float]:
    """Call ``fn`` ``warmup`` times unmeasured, then ``repeats`` times; the seconds of each measured call."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


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
                requests.Session() as stream_session,
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
    with requests.Session() as session:
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


@dataclass
class RequestRecord:
    """One request of a :func:`concurrency_run`; times in seconds from the start of the run."""

    index: int  # submission order
    started_s: float
    finished_s: float
    completion_tokens: int

    @property
    def latency_s(self) -> float:
        return self.finished_s - self.started_s


@dataclass
class ConcurrencyResult:
    kind: str
    concurrency: int
    wall_s: float
    records: list[RequestRecord] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.records)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.wall_s

    @property
    def tokens_per_s(self) -> float:
        return sum(r.completion_tokens for r in self.records) / self.wall_s

    def latencies(self) -> list[float]:
        return [r.latency_s for r in self.records]

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "wall_s": self.wall_s,
            "requests_per_s": self.requests_per_s,
            "tokens_per_s": self.tokens_per_s,
            "latency_p50_s": median(self.latencies()),
            "latency_max_s": max(self.latencies()),
        }


def concurrency_run(
    base_url: str,
    messages: list[dict[str, Any]],
    concurrency: int,
    requests_total: int,
    max_tokens: int = 64,
    kind: str = "text",
    timeout: float = 600.0,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> ConcurrencyResult:
    """Send ``requests_total`` greedy requests from ``concurrency`` threads (one connection each).

    The server generates one answer at a time and queues the rest, so with
    ``concurrency`` > 1 each request's latency includes its wait in the queue.
    ``headers`` go with every request (e.g. the API key); ``extra`` into every
    body (e.g. ``model=`` for servers that check it, such as vLLM).
    """
    local = threading.local()
    start = time.perf_counter()

    def one(index: int) -> RequestRecord:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.headers.update(headers or {})
        began = time.perf_counter() - start
        body = http_chat(local.session, base_url, messages, max_tokens, timeout=timeout, **extra)
        return RequestRecord(index, began, time.perf_counter() - start, body["usage"]["completion_tokens"])

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="bench-client") as pool:
        records = list(pool.map(one, range(requests_total)))
    return ConcurrencyResult(kind, concurrency, time.perf_counter() - start, records)


# ---------------------------------------------------------------------- video
def video_decode_speed(
    path: Path = MOVING_CLIP_PATH, fps: float = 8.0, repeats: int = 3, settings: Settings | None = None
) -> dict[str, Any]:
    """Frames per second of :func:`helpers.media.load_video` (PyAV) sampling ``path`` at ``fps``."""
    import av

    from helpers.config import Settings
    from helpers.media import load_video

    path = Path(path)
    settings = settings or Settings.from_env({}, model="demo", allowed_local_media_path=[path.parent])
    frames = len(load_video(str(path), settings, fps).frames)  # warm-up, and the frame count
    seconds = median(measure_latency(lambda: load_video(str(path), settings, fps), repeats))
    return {
        "reader": f"PyAV {av.__version__}",
        "file": path.name,
        "fps": float(fps),
        "frames": frames,
        "seconds": seconds,
        "frames_per_s": frames / seconds,
    }


# --------------------------------------------------------------------- memory
def _peak_rss_kib() -> int | None:
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def peak_rss_growth(fn: Callable[[], Any]) -> tuple[Any, int | None]:
    """``fn()`` and how far it raised this process's peak RSS, in bytes (None where Linux cannot tell).

    The peak is reset first (``/proc/self/clear_refs``), so earlier work does not hide it.
    """
    import gc

    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        return fn(), None
    before = _peak_rss_kib()
    result = fn()
    after = _peak_rss_kib()
    return result, None if before is None or after is None else (after - before) * 1024


def write_largest_media(folder: Path, pixels: int) -> tuple[Path, Path]:
    """A JPEG picture and a 2 s H.264 clip (4 distinct frames) of about ``pixels`` pixels, in ``folder``."""
    import av
    import numpy as np
    from PIL import ImageDraw

    side = max(64, math.isqrt(pixels) // 2 * 2)  # even sides for YUV 4:2:0
    picture = Image.new("RGB", (side, side), (120, 30, 30))
    ImageDraw.Draw(picture).rectangle((side // 8, side // 8, side // 2, side // 2), fill=(10, 200, 10))
    image_path = folder / "largest.jpg"
    picture.save(image_path, quality=90)
    del picture
    clip_path = folder / "largest.mp4"
    with av.open(str(clip_path), "w") as box:
        stream = box.add_stream("libx264", rate=2, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = side, side, "yuv420p"
        planes = np.full((side * 3 // 2, side), 128, np.uint8)  # Y plane, then U and V
        for i in range(4):
            planes[:side] = 40 + 50 * i
            planes[: side // 4, : side // 4] = 235
            for packet in stream.encode(av.VideoFrame.from_ndarray(planes, format="yuv420p")):
                box.mux(packet)
        for packet in stream.encode():
            box.mux(packet)
    return image_path, clip_path


def _vram_growth(engine: Engine, fn: Callable[[], Any]) -> int:
    import torch

    torch.cuda.synchronize(engine.device)
    torch.cuda.reset_peak_memory_stats(engine.device)
    before = torch.cuda.memory_allocated(engine.device)
    fn()
    return int(torch.cuda.max_memory_allocated(engine.device) - before)


def _request_vram(
    engine: Engine,
    local: Engine,
    messages: list[dict[str, Any]],
    tokens: int,
    measure: Callable[[Engine, Callable[[], Any]], int],
    probe: MemoryProbe | None,
) -> dict[str, Any]:
    """VRAM of one request generating one token, against its estimate; ``vram_skipped`` says why not.

    The bench's engine keeps a short context (BENCH_MAX_MODEL_LEN, so that two copies
    fit), shorter than the largest requests: this one runs with the context it needs.
    """
    from helpers import costs
    from helpers.errors import RequestError

    shape = costs.ModelShape.from_pretrained(engine.model_path, engine.dtype.itemsize)
    estimate = shape.kv_cache_bytes(tokens + 1) + costs.RUNTIME_OVERHEAD_BYTES
    entry: dict[str, Any] = {"vram_estimate_bytes": estimate, "vram_skipped": None}
    runner = local.with_settings(max_model_len=tokens + 1)
    reading = (probe or (lambda: costs.torch_probe(engine.device)))()
    if runner.max_model_len < tokens + 1:
        entry["vram_skipped"] = f"{tokens + 1} tokens exceed the model's context ({runner.max_model_len})"
    elif reading is not None and reading[0] < estimate:
        entry["vram_skipped"] = (
            f"needs about {costs.format_bytes(estimate)} of free GPU memory, "
            f"{costs.format_bytes(reading[0])} free"
        )
    else:
        try:
            entry["peak_vram_bytes"] = measure(
                engine, lambda: runner.chat(messages, max_new_tokens=1, temperature=0)
            )
        except RequestError as exc:  # e.g. out of memory (413): a figure we could not take
            entry["vram_skipped"] = exc.message
        else:
            entry["vram_ratio"] = entry["peak_vram_bytes"] / estimate
    return entry


def media_memory(
    engine: Engine,
    pixels: int | None = None,
    vram_growth: Callable[[Engine, Callable[[], Any]], int] | None = None,
    probe: MemoryProbe | None = None,
) -> dict[str, dict[str, Any]]:
    """Peak RSS (and VRAM on a GPU) of the largest image request and video request, against estimates.

    ``pixels`` (default ``max_image_input_pixels``) sizes every picture and frame.
    ``vram_growth`` measures the VRAM a call adds (default on a GPU: ``torch.cuda``
    peak statistics) and ``probe`` reads (free, total) GPU bytes (default
    ``torch.cuda.mem_get_info``); tests pass stand-ins for both.
    """
    import tempfile

    from helpers import costs

    if vram_growth is None and str(engine.device).startswith("cuda"):
        vram_growth = _vram_growth
    s = engine.settings
    frames = s.video_max_frames - s.video_max_frames % costs.TEMPORAL_PATCH_SIZE
    images = s.max_images_per_request
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-media-") as tmp:
        image_path, clip_path = write_largest_media(Path(tmp), pixels or s.max_image_input_pixels)
        local = engine.with_settings(allowed_local_media_path=[Path(tmp)])
        with Image.open(image_path) as picture:
            input_pixels = picture.width * picture.height
        cases = {
            "image": (
                [{"type": "image", "image": image_path.name}] * images,
                images,
                costs.image_host_bytes(input_pixels, s.image_max_pixels, images),
            ),
            "video": (
                [{"type": "video", "video": clip_path.name, "nframes": frames}],
                frames,
                costs.video_host_bytes(input_pixels, s.video_max_pixels, frames),
            ),
        }
        for kind, (content, pictures, estimate) in cases.items():
            messages = [{"role": "user", "content": [*content, {"type": "text", "text": "?"}]}]
            prepared, rss = peak_rss_growth(lambda messages=messages: local.prepare(messages))
            tokens = prepared.prompt_tokens
            del prepared
            entry: dict[str, Any] = {
                "input_pixels": input_pixels,
                "pictures": pictures,
                "prompt_tokens": tokens,
                "peak_rss_bytes": rss,
                "rss_estimate_bytes": estimate,
                "rss_ratio": None if rss is None else rss / estimate,
                "peak_vram_bytes": None,
                "vram_estimate_bytes": None,
                "vram_ratio": None,
                "vram_skipped": None,
            }
            if vram_growth is not None:
                entry.update(_request_vram(engine, local, messages, tokens, vram_growth, probe))
            results[kind] = entry
    return results


# ------------------------------------------------------------------------ GPU
def gpu_bandwidth_gb_s(name: str | None) -> float | None:
    """Memory bandwidth (GB/s) of a GPU named like ``torch.cuda.get_device_name()``; None if unknown."""
    if not name:
        return None
    upper = name.upper()
    for parts, bandwidth in GPU_BANDWIDTH_GB_S:
        if all(part in upper for part in parts):
            return bandwidth
    return None


def decode_weight_bytes(model) -> int:
    """Bytes of weights read for every decoded token: the language model and its output head.

    The vision tower runs once per picture during prefill, not per token, and an
    input embedding that is not shared with the output head is only gathered
    one row at a time, so neither counts toward the bandwidth limit.
    """
    head = model.get_output_embeddings()
    head_weight = head.weight if head is not None else None
    embed_weight = model.get_input_embeddings().weight
    total = 0
    for name, param in model.named_parameters():  # tied weights are listed once
        if ".visual." in f".{name}" or (param is embed_weight and param is not head_weight):
            continue
        total += param.numel() * param.element_size()
    return total


def gpu_decode(
    engine: Engine, messages: list[dict[str, Any]] | None = None, tokens: int = GPU_DECODE_TOKENS
) -> dict[str, Any]:
    """Peak VRAM, greedy decode speed and its fraction of the bandwidth limit; all None without CUDA."""
    facts: dict[str, Any] = dict.fromkeys(
        ("name", "peak_vram_bytes", "decode_tokens", "decode_tokens_per_s", "bandwidth_gb_s"),
    )
    facts["bandwidth_fraction"] = None
    if not str(engine.device).startswith("cuda"):
        return facts
    import torch

    result = engine.chat(messages or text_messages(), max_new_tokens=tokens, temperature=0)
    decode_s = result.seconds - (result.first_token_seconds or 0.0)
    generated = result.usage.completion_tokens
    rate = (generated - 1) / decode_s if generated > 1 and decode_s > 0 else None
    name = torch.cuda.get_device_name(engine.device)
    bandwidth = gpu_bandwidth_gb_s(name)
    facts.update(
        name=name,
        peak_vram_bytes=int(torch.cuda.max_memory_allocated(engine.device)),
        decode_tokens=generated,
        decode_tokens_per_s=rate,
        bandwidth_gb_s=bandwidth,
    )
    if rate and bandwidth:
        facts["bandwidth_fraction"] = decode_weight_bytes(engine.model) * rate / (bandwidth * 1e9)
    return facts


# ------------------------------------------------------------------ the run
# A JSON schema whose answers run long (a list of boxes, as in grounding): enough tokens
# to measure decoding speed even with the demo model's random weights.
BENCH_SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "label": {"type": "string", "maxLength": 16},
            "bbox_2d": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 1000},
                "minItems": 4,
                "maxItems": 4,
            },
        },
        "required": ["label", "bbox_2d"],
    },
    "minItems": 1,
    "maxItems": 8,
}


def structured_output_speed(
    engine: Engine, messages: list[dict[str, Any]], repeats: int, max_tokens: int
) -> dict[str, Any]:
    """Greedy tokens/s without and with a JSON schema (interleaved pairs), and the schema's compile time."""
    from helpers.structured import parse_response_format

    fmt = {"type": "json_schema", "json_schema": {"name": "boxes", "schema": BENCH_SCHEMA}}
    # A schema this run has never compiled (the cache key is the schema), for an honest first compile.
    fresh = {**BENCH_SCHEMA, "description": f"bench {time.time_ns()}"}
    grammars = engine.grammars  # built outside the timing: the tokenizer's tables, once per model
    start = time.perf_counter()
    grammars.compile(
        parse_response_format({"type": "json_schema", "json_schema": {"name": "f", "schema": fresh}})
    )
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    grammars.compile(
        parse_response_format({"type": "json_schema", "json_schema": {"name": "f", "schema": fresh}})
    )
    cached_s = time.perf_counter() - start
    plain: list[float] = []
    constrained: list[float] = []
    tokens = 0
    for _ in range(repeats):
        for speeds, extra in ((plain, {}), (constrained, {"response_format": fmt})):
            result = engine.chat(messages, max_new_tokens=max_tokens, temperature=0, **extra)
            speeds.append(result.usage.completion_tokens / result.seconds)
            tokens = result.usage.completion_tokens if extra else tokens
    plain_speed, schema_speed = median(plain), median(constrained)
    return {
        "plain_tokens_per_s": plain_speed,
        "schema_tokens_per_s": schema_speed,
        "slowdown": plain_speed / schema_speed - 1,
        "schema_tokens": tokens,
        "compile_ms": compile_s * 1000,
        "cached_compile_ms": cached_s * 1000,
    }


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


def check_two_copies_fit(settings: Settings, probe: MemoryProbe | None = None) -> GpuMemoryStatus:
    """On a GPU, make sure the model fits twice: the bench loads it on purpose in two processes.

    The in-process engine is the baseline and the server is what is measured
    (HTTP overhead = server - in-process), so both must hold the weights at once.
    They load at the same time, so each one's own check would see the whole GPU
    free; this checks both together first. Raises :class:`NotEnoughGPUMemory`.
    """
    status = gpu_memory_status(settings, probe)
    if status.cuda and status.free < 2 * status.needed:
        raise NotEnoughGPUMemory(
            "make bench loads the model twice on purpose (in this process as the baseline, and in the "
            "API server it measures), so it needs "
            f"2 x {status.needed / 1024**3:.1f} GiB; {status.free / 1024**3:.1f} GiB is free.\n"
            "  Fix: shut down other Jupyter kernels and servers that hold the GPU (`nvidia-smi` lists "
            "them), lower QWEN3VL_MAX_MODEL_LEN, or run the bench on the demo model (QWEN3VL_MODEL=demo)."
        )
    return status


def run_bench(
    model: str | None = None,
    repeats: int = 5,
    out_dir: Path | str = DEFAULT_OUT,
    max_tokens: int = 64,
    concurrency: Sequence[int] = CONCURRENCY,
    health_requests: int | None = None,
    long_tokens: int = LONG_GENERATION_TOKENS,
    base_url: str | None = None,
    verbose: bool = True,
    media_pixels: int | None = None,
) -> dict[str, Any]:
    """Measure everything, write ``bench.json`` and ``bench.png`` into ``out_dir``; return the results.

    ``base_url`` measures a server that is already running (with the same model)
    instead of starting one; its API key is ``$QWEN3VL_API_KEY``. ``media_pixels``
    sizes the pictures and frames of the memory measurement (default: the largest
    the settings accept).
    """
    import torch

    from helpers import launcher
    from helpers.client import auth_headers
    from helpers.engine import Engine

    began = time.perf_counter()
    model = model or os.environ.get("QWEN3VL_MODEL") or "demo"
    health_requests = health_requests or 20 * repeats
    headers = auth_headers() if base_url is not None else {}  # a running server: $QWEN3VL_API_KEY
    settings = Settings.from_env(model=model, allowed_local_media_path=[IMAGES_DIR])
    settings = settings.replace(max_model_len=min(settings.max_model_len, BENCH_MAX_MODEL_LEN))
    check_two_copies_fit(settings)
    server = None
    _log(verbose, f"基准测试：模型 {model}，每项重复 {repeats} 次")
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:  # load in this process while the server starts
            loading = pool.submit(Engine.load, settings, False)
            if base_url is None:
                server = launcher.start_server(
                    model=model,
                    port=launcher.free_port(),
                    extra_args=[
                        *("--max-queue", str(max(16, 2 * max(concurrency))), "--log-level", "warning"),
                        *("--max-model-len", str(settings.max_model_len)),
                    ],
                    timeout=600,
                )
                base_url = server.base_url
            engine = loading.result()
        _log(verbose, f"模型已在本进程加载（{engine.device}），服务在 {base_url}")
        http = requests.Session()  # one keep-alive connection, as a real client would use
        http.headers.update(headers)
        text = text_messages()
        prompt_tokens = engine.prepare(text).prompt_tokens

        _log(verbose, "预热 ...")
        # Both sides get the same warm-up, images included: on a CPU the first image request
        # leaves a second OpenMP thread pool behind (image preprocessing runs torch ops in a
        # thread that outlives the request), which slows every later generation of the demo
        # model by about a third. Warming only the server would bill that to HTTP.
        for messages in (text, image_messages()):
            engine.chat(messages, max_new_tokens=max_tokens, temperature=0)
            http_chat(http, base_url, messages, max_tokens)
        health_latencies(http, base_url, 5)

        _log(verbose, f"1/6 同一个 {max_tokens} token 的贪心请求：进程内 vs HTTP ...")
        in_process: list[float] = []
        over_http: list[float] = []
        completion_tokens = 0
        for _ in range(3 * repeats):  # interleaved pairs, so both see the same background load
            start = time.perf_counter()
            completion_tokens = engine.chat(
                text, max_new_tokens=max_tokens, temperature=0
            ).usage.completion_tokens
            in_process.append(time.perf_counter() - start)
            over_http.extend(measure_latency(lambda: http_chat(http, base_url, text, max_tokens), 1))

        _log(verbose, "2/6 首个 token 的时间：进程内 vs SSE ...")
        first_in: list[float] = []
        first_sse: list[float] = []
        for _ in range(repeats):
            first_in.append(engine_first_token(engine, text, max_tokens))
            first_sse.append(sse_first_token(http, base_url, text, max_tokens))
            wait_idle(http, base_url)

        _log(verbose, f"3/6 /health 延迟：空闲与生成中各 {health_requests} 次 ...")
        idle = health_latencies(http, base_url, health_requests)
        busy, still_running = health_while_generating(
            base_url, health_requests, text, long_tokens, headers=headers
        )

        _log(verbose, f"4/6 并发 {', '.join(map(str, concurrency))} 下的吞吐 ...")
        throughput = [
            concurrency_run(base_url, text, c, max(repeats, 2 * c), max_tokens, headers=headers).summary()
            for c in concurrency
        ]
        throughput.append(
            concurrency_run(
                base_url, image_messages(), 1, repeats, max_tokens, "image", headers=headers
            ).summary()
        )

        _log(verbose, "5/6 视频解码速度 ...")
        video = video_decode_speed(MOVING_CLIP_PATH, 8.0, repeats, settings)
        _log(verbose, "    最大图片请求与最大视频请求的内存峰值 ...")
        memory = media_memory(engine, media_pixels)

        _log(verbose, "6/6 GPU：显存峰值与解码速度 ...")
        gpu = gpu_decode(engine, text)

        _log(verbose, "另：结构化输出（JSON schema 约束解码）的开销 ...")
        structured = structured_output_speed(engine, text, repeats, max_tokens)
    finally:
        if server is not None:
            launcher.stop_server(server)

    latency_in, latency_http = median(in_process), median(over_http)
    overhead = median([h - i for i, h in zip(in_process, over_http, strict=True)])
    info = engine.info()
    results: dict[str, Any] = {
        "schema_version": 1,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_s": 0.0,
        "model": model,
        "demo": engine.is_demo,
        "device": info["device"],
        "dtype": info["dtype"],
        "weight_bytes": engine.weight_bytes(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count() or 1,
        "repeats": repeats,
        "max_tokens": max_tokens,
        "prompt_tokens": prompt_tokens,
        "latency": {
            "pairs": len(in_process),
            "in_process_s": latency_in,
            "http_s": latency_http,
            "overhead_ms": overhead * 1000,
            "overhead_ratio": overhead / latency_http,
            "completion_tokens": completion_tokens,
            "in_process_samples_s": in_process,
            "http_samples_s": over_http,
        },
        "first_token": {
            "in_process_s": median(first_in),
            "sse_s": median(first_sse),
            "in_process_samples_s": first_in,
            "sse_samples_s": first_sse,
        },
        "health": {
            "requests": health_requests,
            "idle_p50_ms": percentile(idle, 50) * 1000,
            "idle_p99_ms": percentile(idle, 99) * 1000,
            "busy_p50_ms": percentile(busy, 50) * 1000,
            "busy_p99_ms": percentile(busy, 99) * 1000,
            "busy_generation_running": still_running,
        },
        "throughput": throughput,
        "video_decode": video,
        "media_memory": memory,
        "gpu": gpu,
        "structured_output": structured,
    }
    results["goals"] = {
        "overhead_ratio_max": OVERHEAD_RATIO_GOAL,
        "overhead_ok": results["latency"]["overhead_ratio"] <= OVERHEAD_RATIO_GOAL,
        "health_busy_p99_max_ms": HEALTH_P99_GOAL_MS,
        "health_ok": results["health"]["busy_p99_ms"] < HEALTH_P99_GOAL_MS,
    }
    results["wall_s"] = time.perf_counter() - began
    return save_results(results, out_dir, "bench", plot_results)


# ------------------------------------------------------------------ reports
def _fmt(value: float | None, pattern: str, missing: str = "—") -> str:
    return missing if value is None else pattern.format(value)


def format_table(results: dict[str, Any]) -> str:
    """The printed summary of a bench run (learner-facing, in Chinese)."""
    lat, first, health = results["latency"], results["first_token"], results["health"]
    video, gpu, goals = results["video_decode"], results["gpu"], results["goals"]
    mark = {True: "✅", False: "❌"}
    rows = [
        ("进程内延迟（中位数）", f"{lat['in_process_s'] * 1000:.1f} ms"),
        ("HTTP 延迟（中位数）", f"{lat['http_s'] * 1000:.1f} ms"),
        (
            "HTTP 开销（成对差值中位数）",
            f"{lat['overhead_ms']:.1f} ms = {lat['overhead_ratio']:.1%} "
            f"{mark[goals['overhead_ok']]}（目标 ≤ {goals['overhead_ratio_max']:.0%}）",
        ),
        ("首个 token：进程内 / SSE", f"{first['in_process_s'] * 1000:.1f} / {first['sse_s'] * 1000:.1f} ms"),
        ("/health 空闲 p50 / p99", f"{health['idle_p50_ms']:.1f} / {health['idle_p99_ms']:.1f} ms"),
        (
            "/health 生成中 p50 / p99",
            f"{health['busy_p50_ms']:.1f} / {health['busy_p99_ms']:.1f} ms {mark[goals['health_ok']]}"
            f"（目标 < {goals['health_busy_p99_max_ms']:g} ms）",
        ),
    ]
    for entry in results["throughput"]:
        rows.append(
            (
                f"吞吐 {entry['kind']} 并发 {entry['concurrency']}（{entry['requests']} 个请求）",
                f"{entry['requests_per_s']:.2f} 请求/s，{entry['tokens_per_s']:.1f} token/s，"
                f"延迟 p50 {entry['latency_p50_s']:.2f} s / 最大 {entry['latency_max_s']:.2f} s",
            )
        )
    rows += [
        (
            f"视频解码（{video['reader']}，{video['fps']:g} fps）",
            f"{video['frames_per_s']:.0f} 帧/s（{video['frames']} 帧 {video['seconds'] * 1000:.0f} ms）",
        ),
        *_memory_rows(results["media_memory"]),
        ("GPU", gpu["name"] or "无（CPU）"),
        ("显存峰值", _fmt(gpu["peak_vram_bytes"] and gpu["peak_vram_bytes"] / 1024**3, "{:.2f} GiB")),
        ("解码速度（贪心）", _fmt(gpu["decode_tokens_per_s"], "{:.1f} token/s")),
        ("占带宽上限的比例", _fmt(gpu["bandwidth_fraction"], "{:.0%}")),
    ]
    if structured := results.get("structured_output"):
        rows += [
            (
                "贪心解码：无约束 / JSON schema",
                f"{structured['plain_tokens_per_s']:.1f} / {structured['schema_tokens_per_s']:.1f} token/s"
                f"（约束解码慢 {structured['slowdown']:.1%}）",
            ),
            (
                "schema 编译：首次 / 命中缓存",
                f"{structured['compile_ms']:.1f} / {structured['cached_compile_ms']:.2f} ms",
            ),
        ]
    width = max(display_width(label) for label, _ in rows)
    title = (
        f"基准测试 · 模型 {results['model']}{'（演示模型）' if results['demo'] else ''} · "
        f"{results['device']} / {results['dtype']} · {results['max_tokens']} token 贪心请求 · "
        f"重复 {results['repeats']} 次 · 共 {results['wall_s']:.0f} s"
    )
    lines = [title, "-" * min(110, display_width(title))]
    lines += [f"{pad_to_width(label, width)}  {value}" for label, value in rows]
    return "\n".join(lines)


def _memory_rows(memory: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    names = {"image": ("图片", "张"), "video": ("视频", "帧")}
    rows = []
    for kind, m in memory.items():
        side = math.isqrt(m["input_pixels"])
        what, unit = names[kind]
        label = f"内存峰值：最大{what}请求（{m['pictures']} {unit} {side}×{side}）"
        value = (
            f"RSS {_fmt(m['peak_rss_bytes'] and m['peak_rss_bytes'] / 1024**2, '{:.0f} MiB')}"
            f" / 估计 {m['rss_estimate_bytes'] / 1024**2:.0f} MiB = {_fmt(m['rss_ratio'], '{:.2f}')}"
        )
        if m["peak_vram_bytes"] is not None:
            value += (
                f"；显存 {m['peak_vram_bytes'] / 1024**3:.2f} GiB / 估计 "
                f"{m['vram_estimate_bytes'] / 1024**3:.2f} GiB = {m['vram_ratio']:.2f}"
            )
        rows.append((label, value))
    return rows


def plot_results(results: dict[str, Any], path: Path | str) -> Path:
    """Save a three-panel PNG: latency, /health latency, throughput by concurrency."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure with the Agg canvas: no pyplot, so no GUI backend and no global state.
    figure = Figure(figsize=(13, 4), dpi=100)
    FigureCanvasAgg(figure)
    left, middle, right = figure.subplots(1, 3)

    lat, first = results["latency"], results["first_token"]
    names = ["in-process", "HTTP"]
    left.bar(names, [lat["in_process_s"] * 1000, lat["http_s"] * 1000], color=["#4c72b0", "#dd8452"])
    left.bar(
        names,
        [first["in_process_s"] * 1000, first["sse_s"] * 1000],
        color="none",
        edgecolor="black",
        hatch="//",
        label="first token",
    )
    left.set_title(
        f"{results['max_tokens']}-token greedy request (median)\n"
        f"HTTP overhead {lat['overhead_ms']:.1f} ms = {lat['overhead_ratio']:.1%}"
    )
    left.set_ylabel("ms")
    left.legend()

    health = results["health"]
    x = range(2)
    middle.bar([i - 0.2 for i in x], [health["idle_p50_ms"], health["busy_p50_ms"]], 0.4, label="p50")
    middle.bar([i + 0.2 for i in x], [health["idle_p99_ms"], health["busy_p99_ms"]], 0.4, label="p99")
    middle.axhline(results["goals"]["health_busy_p99_max_ms"], color="red", linestyle="--", label="goal")
    middle.set_xticks(list(x), ["idle", "generating"])
    middle.set_title("/health latency")
    middle.set_ylabel("ms")
    middle.legend()

    text_rows = [t for t in results["throughput"] if t["kind"] == "text"]
    concurrency = [t["concurrency"] for t in text_rows]
    right.plot(concurrency, [t["tokens_per_s"] for t in text_rows], "o-", label="text tokens/s")
    for t in results["throughput"]:
        if t["kind"] != "text":
            right.plot([t["concurrency"]], [t["tokens_per_s"]], "s", label=f"{t['kind']} tokens/s")
    twin = right.twinx()
    twin.plot(concurrency, [t["latency_p50_s"] for t in text_rows], "x--", color="gray", label="p50 latency")
    twin.set_ylabel("p50 latency (s)")
    twin.set_ylim(bottom=0)
    right.set_ylim(bottom=0)
    right.set_xticks(concurrency)
    right.set_xlabel("concurrent clients")
    right.set_ylabel("generated tokens/s")
    right.set_title("throughput (one generation at a time)")
    right.legend(loc="center left")
    twin.legend(loc="lower right")

    figure.suptitle(f"helpers.bench · {results['model']} · {results['device']} / {results['dtype']}")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    return path


# ------------------------------------------------------- side-by-side comparison
COMPARE_CONCURRENCY = (1, 4, 8, 16)


@dataclass
class Target:
    """A server to compare: its name in the tables, root URL, API key and served model name."""

    name: str
    base_url: str
    api_key: str | None = None
    model: str | None = None

    def headers(self) -> dict[str, str]:
        from helpers.client import auth_headers

        return auth_headers(self.api_key, environ={})

    def resolve_model(self) -> str:
        """The model name the server serves (vLLM refuses requests that name another one)."""
        if self.model is None:
            from helpers.client import openai_client, served_model

            self.model = served_model(openai_client(self.base_url, self.api_key))
        return self.model


def compare_requests(concurrency: int, minimum: int = 8) -> int:
    """Requests per concurrency level: every client sends at least two, and never fewer than ``minimum``."""
    return max(minimum, 2 * concurrency)


def compare_summary(result: ConcurrencyResult) -> dict[str, Any]:
    """:meth:`ConcurrencyResult.summary` plus the 99th percentile latency."""
    return {**result.summary(), "latency_p99_s": percentile(result.latencies(), 99)}


def compare_load(
    targets: Sequence[Target],
    messages: list[dict[str, Any]] | None = None,
    concurrency: Sequence[int] = COMPARE_CONCURRENCY,
    max_tokens: int = 64,
    minimum_requests: int = 8,
    verbose: bool = True,
) -> dict[str, Any]:
    """The same greedy load on every target, level by level (interleaved, so all see the same machine).

    Returns ``{"targets": [names], "levels": [{"concurrency", "requests", <name>: summary, ...}]}``.
    """
    messages = messages or text_messages()
    for target in targets:  # warm-up: first requests pay for lazy initialisation
        target.resolve_model()
        concurrency_run(
            target.base_url, messages, 1, 2, max_tokens, headers=target.headers(), model=target.model
        )
    levels = []
    for level in concurrency:
        total = compare_requests(level, minimum_requests)
        row: dict[str, Any] = {"concurrency": level, "requests": total}
        for target in targets:
            _log(verbose, f"  {target.name}: 并发 {level}，{total} 个请求 ...")
            result = concurrency_run(
                target.base_url,
                messages,
                level,
                total,
                max_tokens,
                headers=target.headers(),
                model=target.model,
            )
            row[target.name] = compare_summary(result)
        levels.append(row)
    return {"targets": [t.name for t in targets], "max_tokens": max_tokens, "levels": levels}


def format_compare_table(results: dict[str, Any]) -> str:
    """Requests/s, p50/p99 latency per server and concurrency, and the ratio of the second to the first."""
    first, second = results["targets"][:2]
    header = [
        "并发",
        f"{first} 请求/s",
        f"{second} 请求/s",
        "吞吐倍数",
        f"{first} p50/p99 s",
        f"{second} p50/p99 s",
    ]
    rows = [header]
    for level in results["levels"]:
        a, b = level[first], level[second]
        rows.append(
            [
                str(level["concurrency"]),
                f"{a['requests_per_s']:.2f}",
                f"{b['requests_per_s']:.2f}",
                f"{b['requests_per_s'] / a['requests_per_s']:.1f}×",
                f"{a['latency_p50_s']:.2f} / {a['latency_p99_s']:.2f}",
                f"{b['latency_p50_s']:.2f} / {b['latency_p99_s']:.2f}",
            ]
        )
    widths = [max(display_width(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(pad_to_width(cell, w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    title = f"同样的负载：{first} vs {second}（{results['max_tokens']} token 贪心请求）"
    scaling = {
        name: results["levels"][-1][name]["requests_per_s"] / results["levels"][0][name]["requests_per_s"]
        for name in (first, second)
    }
    last = results["levels"][-1]["concurrency"]
    footer = f"并发 {last} 相对并发 1 的吞吐：" + "，".join(f"{n} {r:.1f}×" for n, r in scaling.items())
    if results.get("startup_s"):
        footer += "\n启动到就绪：" + "，".join(f"{n} {s:.0f} s" for n, s in results["startup_s"].items())
    return "\n".join([title, "-" * display_width(lines[0]), *lines, footer])


def plot_compare(results: dict[str, Any], path: Path | str) -> Path:
    """Save a two-panel PNG: requests/s and p50/p99 latency by concurrency, one line per server."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4), dpi=100)
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    levels = results["levels"]
    x = [level["concurrency"] for level in levels]
    for name in results["targets"]:
        left.plot(x, [level[name]["requests_per_s"] for level in levels], "o-", label=name)
        (line,) = right.plot(x, [level[name]["latency_p50_s"] for level in levels], "o-", label=f"{name} p50")
        right.plot(
            x,
            [level[name]["latency_p99_s"] for level in levels],
            "x--",
            color=line.get_color(),
            label=f"{name} p99",
        )
    for axis in (left, right):
        axis.set_xticks(x)
        axis.set_xlabel("concurrent clients")
        axis.set_ylim(bottom=0)
        axis.legend()
    left.set_ylabel("requests/s")
    left.set_title("throughput")
    right.set_ylabel("latency per request (s)")
    right.set_title("latency (queueing included)")
    figure.suptitle(
        f"same load, {results['max_tokens']}-token greedy requests: {' vs '.join(results['targets'])}"
    )
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    return path


def run_compare(
    model: str | None = None,
    compare: str | None = "vllm",
    compare_base_url: str | None = None,
    base_url: str | None = None,
    concurrency: Sequence[int] = COMPARE_CONCURRENCY,
    max_tokens: int = 64,
    out_dir: Path | str = DEFAULT_OUT,
    verbose: bool = True,
) -> dict[str, Any]:
    """Start (or reach) our server and a second one, drive both with the same load, write compare.json/.png.

    ``compare="vllm"`` starts vLLM with the same settings (helpers.vllm_server);
    ``compare_base_url`` uses a running server instead. ``base_url`` uses a
    running server of ours instead of starting one. The API key of reached
    servers is ``$QWEN3VL_API_KEY``.
    """
    from helpers import launcher
    from helpers.client import api_key
    from helpers.config import Settings

    began = time.perf_counter()
    model = model or os.environ.get("QWEN3VL_MODEL") or "demo"
    started: list[Callable[[], None]] = []
    startup: dict[str, float] = {}  # seconds from start to a 200 from /health, per server started here
    try:
        if compare_base_url is None and compare == "vllm":
            from helpers.vllm_server import start_vllm, stop_vllm

            settings = Settings.from_env(model=model, allowed_local_media_path=[IMAGES_DIR])
            _log(verbose, "启动 vLLM（CPU 上约 2 分钟）...")
            starting = time.perf_counter()
            vllm = start_vllm(settings.replace(api_key=None), port=launcher.free_port(), verbose=verbose)
            startup["vLLM"] = time.perf_counter() - starting
            started.append(lambda: stop_vllm(vllm))
            second = Target("vLLM", vllm.base_url)
        elif compare_base_url is not None:
            second = Target("other", compare_base_url, api_key())
        else:
            raise ValueError(f"compare must be 'vllm' or a base URL is needed, got {compare!r}")
        if base_url is None:
            _log(verbose, "启动我们的服务 ...")
            starting = time.perf_counter()
            ours_server = launcher.start_server(
                model=model,
                port=launcher.free_port(),
                extra_args=["--max-queue", str(2 * max(concurrency)), "--log-level", "warning"],
                env={"QWEN3VL_API_KEY": ""},
                timeout=600,
            )
            startup["ours"] = time.perf_counter() - starting
            started.append(lambda: launcher.stop_server(ours_server))
            ours = Target("ours", ours_server.base_url)
        else:
            ours = Target("ours", base_url, api_key())
        _log(verbose, f"同样的负载，并发 {', '.join(map(str, concurrency))} ...")
        results = compare_load(
            [ours, second], concurrency=concurrency, max_tokens=max_tokens, verbose=verbose
        )
    finally:
        for stop in reversed(started):
            stop()
    results.update(
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        model=model,
        cpu_count=os.cpu_count() or 1,
        startup_s=startup,
        wall_s=time.perf_counter() - began,
    )
    return save_results(results, out_dir, "compare", plot_compare)


# ---------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model to measure (default: $QWEN3VL_MODEL, else demo)")
    parser.add_argument("--repeats", type=int, default=5, help="repetitions per figure (default 5)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for bench.json / bench.png")
    parser.add_argument(
        "--max-tokens", type=int, default=64, help="tokens of the greedy request (default 64)"
    )
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=list(CONCURRENCY), help="client threads (default 1 4 8)"
    )
    parser.add_argument(
        "--health-requests", type=int, default=None, help="/health calls per condition (default 20 x repeats)"
    )
    parser.add_argument(
        "--long-tokens",
        type=int,
        default=LONG_GENERATION_TOKENS,
        help="max_tokens of the generation that runs while /health is measured",
    )
    parser.add_argument(
        "--base-url",
        default=None,
        help="measure this running server of ours instead of starting one (default: $QWEN3VL_BASE_URL)",
    )
    parser.add_argument(
        "--compare",
        choices=("vllm",),
        default=None,
        help="instead of the full bench: the same load on our server and on vLLM (same settings)",
    )
    parser.add_argument(
        "--compare-base-url",
        default=None,
        help="instead of the full bench: the same load on our server and the server at this URL",
    )
    parser.add_argument(
        "--media-pixels",
        type=int,
        default=None,
        help="pixels per picture/frame of the memory measurement (default: the largest allowed)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    # Everything is local: the model is on disk (or built locally for demo); never reach a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from helpers.client import base_url_from_env, normalize_base_url

    args.base_url = normalize_base_url(args.base_url) if args.base_url else base_url_from_env()
    if args.compare or args.compare_base_url:
        concurrency = args.concurrency if args.concurrency != list(CONCURRENCY) else list(COMPARE_CONCURRENCY)
        compared = run_compare(
            model=args.model,
            compare=args.compare,
            compare_base_url=normalize_base_url(args.compare_base_url) if args.compare_base_url else None,
            base_url=args.base_url,
            concurrency=concurrency,
            max_tokens=args.max_tokens,
            out_dir=args.out,
        )
        print()
        print(format_compare_table(compared))
        print(f"\n结果已写入 {Path(args.out) / 'compare.json'} 和 {Path(args.out) / 'compare.png'}")
        return 0
    if args.base_url:
        from helpers.launcher import health

        # The full bench reads our server's queue from /health; other servers (vLLM) have none.
        status, body = health(args.base_url, timeout=10)
        if status == 0:
            parser.error(f"nothing answers at {args.base_url}/health")
        if "queue" not in body:
            parser.error(
                f"{args.base_url} (HTTP {status} from /health) is not helpers.server; "
                f"for another server use --compare-base-url {args.base_url}"
            )
    results = run_bench(
        model=args.model,
        repeats=args.repeats,
        out_dir=args.out,
        max_tokens=args.max_tokens,
        concurrency=args.concurrency,
        health_requests=args.health_requests,
        long_tokens=args.long_tokens,
        base_url=args.base_url,
        media_pixels=args.media_pixels,
    )
    print()
    print(format_table(results))
    print(f"\n结果已写入 {Path(args.out) / 'bench.json'} 和 {Path(args.out) / 'bench.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
