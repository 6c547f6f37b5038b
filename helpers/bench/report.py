"""The bench's printed table (learner-facing, Chinese) and its three-panel plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from helpers.display import display_width, pad_to_width


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
