"""Prometheus metrics of the server (``GET /metrics``), named like vLLM's so one dashboard reads both servers.

Where our server measures what vLLM 0.32 measures, the name, the labels and
the histogram buckets are vLLM's (``vllm/v1/metrics/loggers.py`` and
``buckets.py``; HTTP counts as vLLM's prometheus-fastapi-instrumentator writes
them). Our own series start with ``qwen3vl:``.

- ``http_requests_total{method,status,handler}``: every HTTP answer by route
  template and exact status code (vLLM's instrumentator groups it: "2xx").
- ``vllm:num_requests_running`` / ``vllm:num_requests_waiting``: generating now
  (0 or 1 here) / holding a place in the queue.
- ``vllm:request_queue_time_seconds``: how long a request waited for the model.
- ``vllm:time_to_first_token_seconds``: arrival -> first token (queue included).
- ``vllm:e2e_request_latency_seconds``: arrival -> last token.
- ``vllm:prompt_tokens_total`` / ``vllm:generation_tokens_total``: tokens of the
  requests answered in full (vLLM also counts what aborted requests used).
- ``vllm:request_success_total{finished_reason}``: ``stop`` (tool calls too),
  ``length``, and ``abort``: cancelled, the client left (queued or mid-answer) or
  the server stopped; the same count as ``/health``'s ``queue.cancelled``.
- ``vllm:admission_rejections_total{reason="max_num_queued_reqs"}``: the 429s.
- ``qwen3vl:gpu_memory_allocated_bytes`` / ``qwen3vl:gpu_memory_reserved_bytes``:
  torch's figures for the model's GPU; absent on a CPU.

Every app gets its own :class:`~prometheus_client.CollectorRegistry`, so several
apps (tests, notebooks) can live in one process.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST  # text/plain; version=1.0.0, as vLLM 0.32 sends it (same library)

# vLLM 0.32, vllm/v1/metrics/buckets.py
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
TIME_TO_FIRST_TOKEN_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
    7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
FINISH_REASONS = ("stop", "length", "abort")  # tool_calls is "stop" to the engine, as in vLLM
NOT_COUNTED = {"/metrics", "/health"}  # scrapes and probes, as vLLM leaves them out


class ServerMetrics:
    """The server's metrics in their own registry; the server calls the methods below as things happen."""

    def __init__(self, model_name: str, gpu_memory: Callable[[str], tuple[int, int]] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.model_name = model_name
        registry, labels, values = self.registry, ["model_name", "engine"], (model_name, "0")
        self.http_requests = Counter(
            "http_requests",
            "Total number of requests by method, status and handler.",
            ["method", "status", "handler"],
            registry=registry,
        )
        self.running = Gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            labels,
            registry=registry,
        ).labels(*values)
        self.waiting = Gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            labels,
            registry=registry,
        ).labels(*values)
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", labels, registry=registry
        ).labels(*values)
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", labels, registry=registry
        ).labels(*values)
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*labels, "finished_reason"],
            registry=registry,
        )
        self.finished_by_reason = {reason: success.labels(*values, reason) for reason in FINISH_REASONS}
        self.rejections = Counter(
            "vllm:admission_rejections",
            "Number of admission attempts rejected by a queue limit, by reason.",
            ["model_name", "reason"],
            registry=registry,
        ).labels(model_name, "max_num_queued_reqs")
        self.queue_time = Histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            labels,
            buckets=REQUEST_LATENCY_BUCKETS,
            registry=registry,
        ).labels(*values)
        self.time_to_first_token = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            labels,
            buckets=TIME_TO_FIRST_TOKEN_BUCKETS,
            registry=registry,
        ).labels(*values)
        self.e2e_latency = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            labels,
            buckets=REQUEST_LATENCY_BUCKETS,
            registry=registry,
        ).labels(*values)
        self._gpu = _GpuMemory(model_name, gpu_memory or _torch_gpu_memory)
        registry.register(self._gpu)
        self._arrived: weakref.WeakKeyDictionary[Any, tuple[float, float]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    # ----------------------------------------------------------- what is watched
    def watch(
        self, running: Callable[[], float], waiting: Callable[[], float], engine: Callable[[], Any]
    ) -> None:
        """Read the queue's counts and the loaded engine (for its GPU memory) at each scrape."""
        self.running.set_function(running)
        self.waiting.set_function(waiting)
        self._gpu.engine = engine

    # ------------------------------------------------------------------ events
    def rejected(self) -> None:
        """A request was refused with 429 because the queue was full."""
        self.rejections.inc()

    def waited(self, seconds: float) -> None:
        """A request got the model after waiting ``seconds`` in the queue."""
        self.queue_time.observe(seconds)

    def aborted(self) -> None:
        """A request ended without its answer: the client left (queued or mid-answer); or a shutdown."""
        self.finished_by_reason["abort"].inc()

    def started(self, stream: Any, arrived: float) -> None:
        """``stream`` (a ChatStream) began for a request that arrived at ``arrived`` (a perf_counter)."""
        with self._lock:
            self._arrived[stream] = (arrived, time.perf_counter())

    def finished(self, stream: Any) -> None:
        """``stream`` ended with its whole answer (``stream.result``): tokens, latencies, finish reason."""
        with self._lock:
            arrived, began = self._arrived.pop(stream, (None, None))
        result = stream.result
        if result is None:
            return
        self.prompt_tokens.inc(result.usage.prompt_tokens)
        self.generation_tokens.inc(result.usage.completion_tokens)
        self.finished_by_reason["length" if result.finish_reason == "length" else "stop"].inc()
        if arrived is not None:
            self.e2e_latency.observe(time.perf_counter() - arrived)
            if result.first_token_seconds is not None:
                self.time_to_first_token.observe(began - arrived + result.first_token_seconds)

    # -------------------------------------------------------------- exposition
    def exposition(self) -> bytes:
        """The Prometheus text format of every metric (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)


class _GpuMemory:
    """A collector: the loaded model's GPU memory, read at scrape time; nothing on a CPU or before loading."""

    def __init__(self, model_name: str, memory: Callable[[str], tuple[int, int]]) -> None:
        self.model_name = model_name
        self.memory = memory
        self.engine: Callable[[], Any] = lambda: None

    def describe(self) -> list[Metric]:
        return []  # unknown until the model is loaded: not checked at registration

    def collect(self) -> Iterator[Metric]:
        engine = self.engine()
        device = str(getattr(engine, "device", "cpu"))
        if not device.startswith("cuda"):
            return
        allocated, reserved = self.memory(device)
        for name, value, text in (
            ("allocated", allocated, "GPU memory held by tensors (torch.cuda.memory_allocated)."),
            (
                "reserved",
                reserved,
                "GPU memory held by torch's caching allocator (torch.cuda.memory_reserved).",
            ),
        ):
            family = GaugeMetricFamily(
                f"qwen3vl:gpu_memory_{name}_bytes", text, labels=["model_name", "device"]
            )
            family.add_metric([self.model_name, device], value)
            yield family


def _torch_gpu_memory(device: str) -> tuple[int, int]:
    import torch

    return torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)


class HTTPMetrics:
    """ASGI middleware: counts every HTTP answer by method, route template and status code.

    Counted when the response starts, so a client that has its answer already
    sees it counted. The route is the template (``/v1/chat/completions``), never
    the raw path, so unknown paths cannot grow the label set ("none" for them).
    """

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def counting_send(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                started = True
                self._count(scope, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except BaseException:
            if not started:
                self._count(scope, 500)
            raise

    def _count(self, scope, status: int) -> None:
        handler = getattr(scope.get("route"), "path", None) or "none"
        if handler not in NOT_COUNTED:
            self.metrics.http_requests.labels(scope["method"], str(status), handler).inc()


# ---------------------------------------------------------------- reading them
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Samples:
    """A scrape in the Prometheus text format, as ``{(sample name, sorted labels): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def read_metrics(base_url: str, headers: dict[str, str] | None = None, timeout: float = 10.0) -> Samples:
    """``GET /metrics`` of a server (ours, or vLLM: the same names), parsed by :func:`parse_metrics`."""
    import requests

    response = requests.get(base_url.rstrip("/") + "/metrics", headers=headers, timeout=timeout)
    response.raise_for_status()
    return parse_metrics(response.text)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` that carry ``labels`` (0 when there are none)."""
    wanted = set(labels.items())
    return sum(value for (sample, found), value in samples.items() if sample == name and wanted <= set(found))
