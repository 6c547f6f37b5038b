"""Load and throughput: many greedy requests from concurrent clients, one connection each."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from helpers.bench.common import http_chat
from helpers.bench.stats import median
from helpers.client import http_session


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
            local.session = http_session(base_url)
            local.session.headers.update(headers or {})
        began = time.perf_counter() - start
        body = http_chat(local.session, base_url, messages, max_tokens, timeout=timeout, **extra)
        return RequestRecord(index, began, time.perf_counter() - start, body["usage"]["completion_tokens"])

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="bench-client") as pool:
        records = list(pool.map(one, range(requests_total)))
    return ConcurrencyResult(kind, concurrency, time.perf_counter() - start, records)
