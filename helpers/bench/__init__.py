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

The package is split by what it measures, each part readable on its own:
``stats`` (percentiles, timings), ``common`` (request bodies, HTTP calls, saving),
``latency`` (/health idle and busy), ``load`` (concurrent clients, throughput),
``media`` (video decoding, memory of the largest media requests), ``gpu`` (VRAM,
decode speed, bandwidth), ``structured`` (grammar-constrained decoding), ``report``
(table and plot), ``compare`` (side by side) and ``run`` (``run_bench`` and ``main``,
the one entry point). Every public name is importable from ``helpers.bench``.

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

from helpers.bench.common import (
    BENCH_MAX_MODEL_LEN,
    BENCH_PROMPT,
    CONCURRENCY,
    DEFAULT_OUT,
    GPU_DECODE_TOKENS,
    HEALTH_P99_GOAL_MS,
    IMAGE_PROMPT,
    LONG_GENERATION_TOKENS,
    OVERHEAD_RATIO_GOAL,
    REPO_ROOT,
    chat_body,
    engine_first_token,
    http_chat,
    image_messages,
    queue_stats,
    save_results,
    sse_first_token,
    text_messages,
    wait_idle,
)
from helpers.bench.compare import (
    COMPARE_CONCURRENCY,
    Target,
    compare_load,
    compare_requests,
    compare_summary,
    format_compare_table,
    plot_compare,
    run_compare,
)
from helpers.bench.gpu import (
    GPU_BANDWIDTH_GB_S,
    check_two_copies_fit,
    decode_weight_bytes,
    gpu_bandwidth_gb_s,
    gpu_decode,
)
from helpers.bench.latency import health_latencies, health_while_generating
from helpers.bench.load import ConcurrencyResult, RequestRecord, concurrency_run
from helpers.bench.media import media_memory, peak_rss_growth, video_decode_speed, write_largest_media
from helpers.bench.report import format_table, plot_results
from helpers.bench.run import main, run_bench
from helpers.bench.stats import measure_latency, median, percentile
from helpers.bench.structured import BENCH_SCHEMA, structured_output_speed

__all__ = [
    "BENCH_MAX_MODEL_LEN",
    "BENCH_PROMPT",
    "BENCH_SCHEMA",
    "COMPARE_CONCURRENCY",
    "CONCURRENCY",
    "DEFAULT_OUT",
    "GPU_BANDWIDTH_GB_S",
    "GPU_DECODE_TOKENS",
    "HEALTH_P99_GOAL_MS",
    "IMAGE_PROMPT",
    "LONG_GENERATION_TOKENS",
    "OVERHEAD_RATIO_GOAL",
    "REPO_ROOT",
    "ConcurrencyResult",
    "RequestRecord",
    "Target",
    "chat_body",
    "check_two_copies_fit",
    "compare_load",
    "compare_requests",
    "compare_summary",
    "concurrency_run",
    "decode_weight_bytes",
    "engine_first_token",
    "format_compare_table",
    "format_table",
    "gpu_bandwidth_gb_s",
    "gpu_decode",
    "health_latencies",
    "health_while_generating",
    "http_chat",
    "image_messages",
    "main",
    "measure_latency",
    "media_memory",
    "median",
    "peak_rss_growth",
    "percentile",
    "plot_compare",
    "plot_results",
    "queue_stats",
    "run_bench",
    "run_compare",
    "save_results",
    "sse_first_token",
    "structured_output_speed",
    "text_messages",
    "video_decode_speed",
    "wait_idle",
    "write_largest_media",
]
