"""The one entry point: ``run_bench`` measures everything, ``main`` is ``python -m helpers.bench``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from helpers.assets import IMAGES_DIR, MOVING_CLIP_PATH
from helpers.bench.common import (
    BENCH_MAX_MODEL_LEN,
    CONCURRENCY,
    DEFAULT_OUT,
    HEALTH_P99_GOAL_MS,
    LONG_GENERATION_TOKENS,
    OVERHEAD_RATIO_GOAL,
    _log,
    engine_first_token,
    http_chat,
    image_messages,
    save_results,
    sse_first_token,
    text_messages,
    wait_idle,
)
from helpers.bench.compare import COMPARE_CONCURRENCY, format_compare_table, run_compare
from helpers.bench.gpu import check_two_copies_fit, gpu_decode
from helpers.bench.latency import health_latencies, health_while_generating
from helpers.bench.load import concurrency_run
from helpers.bench.media import media_memory, video_decode_speed
from helpers.bench.report import format_table, plot_results
from helpers.bench.stats import measure_latency, median, percentile
from helpers.bench.structured import structured_output_speed
from helpers.client import http_session
from helpers.config import Settings


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
        http = http_session(base_url)  # one keep-alive connection, as a real client would use
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
