"""Side by side: the same greedy load on our server and another one (vLLM, or any URL)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from helpers.assets import IMAGES_DIR
from helpers.bench.common import DEFAULT_OUT, _log, save_results, text_messages
from helpers.bench.load import ConcurrencyResult, concurrency_run
from helpers.bench.stats import percentile
from helpers.config import Settings
from helpers.display import display_width, pad_to_width

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

    began = time.perf_counter()
    model = model or os.environ.get("QWEN3VL_MODEL") or "demo"
    started: list[Callable[[], None]] = []
    startup: dict[str, float] = {}  # seconds from start to a 200 from /health, per server started here
    try:
        if compare_base_url is None and compare != "vllm":
            raise ValueError(f"compare must be 'vllm' or a base URL is needed, got {compare!r}")
        settings = Settings.from_env(model=model, allowed_local_media_path=[IMAGES_DIR])
        ours_args = ["--max-queue", str(2 * max(concurrency)), "--log-level", "warning"]
        vllm_budget: dict[str, Any] = {}
        if compare_base_url is None and base_url is None:
            # One card, two servers: vLLM takes utilization x total at start-up, so both get
            # explicit budgets that fit together (helpers.vllm_server.side_by_side), ours first.
            from helpers.vllm_server import side_by_side

            shares = side_by_side(settings)
            ours_args += ["--max-model-len", str(shares["max_model_len"])]
            settings = settings.replace(max_model_len=shares["max_model_len"])
            vllm_budget = {"gpu_memory_utilization": shares["gpu_memory_utilization"]}
        if base_url is None:
            _log(verbose, "启动我们的服务 ...")
            starting = time.perf_counter()
            ours_server = launcher.start_server(
                model=model,
                port=launcher.free_port(),
                extra_args=ours_args,
                env={"QWEN3VL_API_KEY": ""},
                timeout=600,
            )
            startup["ours"] = time.perf_counter() - starting
            started.append(lambda: launcher.stop_server(ours_server))
            ours = Target("ours", ours_server.base_url)
        else:
            ours = Target("ours", base_url, api_key())
        if compare_base_url is None:
            from helpers.vllm_server import start_vllm, stop_vllm

            _log(verbose, "启动 vLLM（CPU 上约 2 分钟）...")
            starting = time.perf_counter()
            vllm = start_vllm(
                settings.replace(api_key=None), port=launcher.free_port(), verbose=verbose, **vllm_budget
            )
            startup["vLLM"] = time.perf_counter() - starting
            started.append(lambda: stop_vllm(vllm))
            second = Target("vLLM", vllm.base_url)
        else:
            second = Target("other", compare_base_url, api_key())
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
