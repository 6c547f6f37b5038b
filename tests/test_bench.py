"""The benchmark: its statistics, its GPU table, and one tiny end-to-end run on the demo model.

Timings are never asserted here (they belong to the benchmark's report); the
tests pin what the report contains.
"""

from __future__ import annotations

import base64
import json
import re

import pytest
from conftest import API_KEY

from helpers import bench
from helpers.assets import CAT_PHOTO_PATH

GIB = 1024**3

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NUMBER = (int, float)
OPTIONAL_NUMBER = (int, float, type(None))

# Every key of bench.json and the type its value has (a dict means a nested object).
SCHEMA = {
    "schema_version": int,
    "created": str,
    "wall_s": NUMBER,
    "model": str,
    "demo": bool,
    "device": str,
    "dtype": str,
    "weight_bytes": int,
    "torch_threads": int,
    "cpu_count": int,
    "repeats": int,
    "max_tokens": int,
    "prompt_tokens": int,
    "latency": {
        "pairs": int,
        "in_process_s": NUMBER,
        "http_s": NUMBER,
        "overhead_ms": NUMBER,
        "overhead_ratio": NUMBER,
        "completion_tokens": int,
        "in_process_samples_s": list,
        "http_samples_s": list,
    },
    "first_token": {
        "in_process_s": NUMBER,
        "sse_s": NUMBER,
        "in_process_samples_s": list,
        "sse_samples_s": list,
    },
    "health": {
        "requests": int,
        "idle_p50_ms": NUMBER,
        "idle_p99_ms": NUMBER,
        "busy_p50_ms": NUMBER,
        "busy_p99_ms": NUMBER,
        "busy_generation_running": bool,
    },
    "throughput": list,
    "video_decode": {
        "reader": str,
        "file": str,
        "fps": NUMBER,
        "frames": int,
        "seconds": NUMBER,
        "frames_per_s": NUMBER,
    },
    "media_memory": {
        kind: {
            "input_pixels": int,
            "pictures": int,
            "prompt_tokens": int,
            "peak_rss_bytes": (int, type(None)),
            "rss_estimate_bytes": int,
            "rss_ratio": OPTIONAL_NUMBER,
            "peak_vram_bytes": (int, type(None)),
            "vram_estimate_bytes": (int, type(None)),
            "vram_ratio": OPTIONAL_NUMBER,
            "vram_skipped": (str, type(None)),
        }
        for kind in ("image", "video")
    },
    "gpu": {
        "name": (str, type(None)),
        "peak_vram_bytes": (int, type(None)),
        "decode_tokens": (int, type(None)),
        "decode_tokens_per_s": OPTIONAL_NUMBER,
        "bandwidth_gb_s": OPTIONAL_NUMBER,
        "bandwidth_fraction": OPTIONAL_NUMBER,
    },
    "structured_output": {
        "plain_tokens_per_s": NUMBER,
        "schema_tokens_per_s": NUMBER,
        "slowdown": NUMBER,
        "schema_tokens": int,
        "compile_ms": NUMBER,
        "cached_compile_ms": NUMBER,
    },
    "goals": {
        "overhead_ratio_max": NUMBER,
        "overhead_ok": bool,
        "health_busy_p99_max_ms": NUMBER,
        "health_ok": bool,
    },
}
THROUGHPUT_ENTRY = {
    "kind": str,
    "concurrency": int,
    "requests": int,
    "wall_s": NUMBER,
    "requests_per_s": NUMBER,
    "tokens_per_s": NUMBER,
    "latency_p50_s": NUMBER,
    "latency_max_s": NUMBER,
}


def check_schema(data: dict, schema: dict, where: str = "") -> None:
    assert set(data) == set(schema), f"{where}: keys differ: {set(data) ^ set(schema)}"
    for key, kind in schema.items():
        if isinstance(kind, dict):
            check_schema(data[key], kind, f"{where}{key}.")
        else:
            value = data[key]
            assert isinstance(value, kind), f"{where}{key} is {type(value).__name__}"
            assert not (isinstance(value, bool) and kind in (NUMBER, int)), f"{where}{key} is a bool"


def all_keys(schema: dict) -> set[str]:
    keys = set(schema) | set(THROUGHPUT_ENTRY)
    for value in schema.values():
        if isinstance(value, dict):
            keys |= all_keys(value)
    return keys


# ------------------------------------------------------------------ statistics
@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([4.0, 1.0, 3.0, 2.0], 0, 1.0),  # order does not matter
        ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
        ([0.0, 10.0], 99, 9.9),
        ([7.0], 99, 7.0),
        (list(range(101)), 99, 99.0),
    ],
)
def test_percentile_interpolates_like_numpy(values, q, expected):
    assert bench.percentile(values, q) == pytest.approx(expected)


def test_percentile_refuses_no_values_and_bad_q():
    with pytest.raises(ValueError, match="no values"):
        bench.percentile([], 50)
    with pytest.raises(ValueError, match="between 0 and 100"):
        bench.percentile([1.0], 101)


def test_median_is_the_50th_percentile():
    assert bench.median([3.0, 1.0, 2.0]) == 2.0


def test_measure_latency_runs_warmup_unmeasured_then_repeats():
    calls = []
    samples = bench.measure_latency(lambda: calls.append(1), repeats=4, warmup=2)
    assert len(calls) == 6 and len(samples) == 4
    assert all(isinstance(s, float) and s >= 0 for s in samples)


def test_a_gpu_name_must_hold_every_part_of_a_row_and_unknown_cards_get_no_guess():
    # The rule, not the table's figures: two H100 variants told apart by a second part of the name.
    assert bench.gpu_bandwidth_gb_s("NVIDIA H100 PCIe") != bench.gpu_bandwidth_gb_s("NVIDIA H100 80GB HBM3")
    assert bench.gpu_bandwidth_gb_s("NVIDIA A100-SXM4-40GB") is None  # only the 80 GB A100 is listed
    assert bench.gpu_bandwidth_gb_s("Tesla T4") is None and bench.gpu_bandwidth_gb_s(None) is None


def test_gpu_figures_are_null_on_a_cpu_and_measured_on_a_gpu(engine):
    facts = bench.gpu_decode(engine, tokens=8)
    assert set(facts) == set(SCHEMA["gpu"])
    if engine.device.startswith("cuda"):
        assert facts["name"] and facts["peak_vram_bytes"] > 0 and 0 < facts["decode_tokens"] <= 8
    else:
        assert all(v is None for v in facts.values())


def test_bandwidth_counts_the_language_model_not_the_vision_tower(engine):
    model = engine.model
    vision = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if ".visual." in f".{n}")
    assert vision > 0
    # the demo checkpoint ties its input embedding to the output head, so only the vision tower drops out
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert bench.decode_weight_bytes(model) == engine.weight_bytes() - vision


def test_image_request_carries_the_cat_as_a_jpeg_data_uri():
    (message,) = bench.image_messages()
    url = message["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == CAT_PHOTO_PATH.read_bytes()


def test_video_decode_speed_reads_every_frame_of_the_clip_at_8_fps():
    from helpers.assets import CLIP

    video = bench.video_decode_speed(repeats=1)
    check_schema(video, SCHEMA["video_decode"])
    assert video["frames"] == CLIP.frame_count and video["reader"].startswith("PyAV")


def test_every_json_key_is_documented_in_the_module_docstring():
    documented = set(re.findall(r"``(\w+)``", bench.__doc__))
    assert all_keys(SCHEMA) <= documented, all_keys(SCHEMA) - documented


# ------------------------------------------------- the GPU memory step, simulated
def short_context_gpu_engine(engine):
    """The shared engine as the bench holds it on a GPU: a short context, a CUDA device (claimed)."""
    import dataclasses

    return dataclasses.replace(engine.with_settings(max_model_len=64), device="cuda:0")


def test_the_gpu_memory_step_runs_each_largest_request_with_the_context_it_needs(engine):
    measured = []

    def vram_growth(measured_engine, generate):
        generate()  # the real request: context_length_exceeded here was issue 16
        measured.append(measured_engine.device)
        return 123 * 1024**2

    memory = bench.media_memory(
        short_context_gpu_engine(engine), 64 * 64, vram_growth=vram_growth, probe=lambda: (70 * GIB, 80 * GIB)
    )
    assert measured == ["cuda:0", "cuda:0"]
    for entry in memory.values():
        assert entry["prompt_tokens"] > 64  # longer than the bench engine's context
        assert entry["vram_skipped"] is None and entry["peak_vram_bytes"] == 123 * 1024**2
        assert entry["vram_ratio"] == entry["peak_vram_bytes"] / entry["vram_estimate_bytes"]


def test_the_gpu_memory_step_records_why_it_skipped_a_request_that_cannot_fit(engine):
    def vram_growth(measured_engine, generate):
        raise AssertionError("nothing may run without the memory for it")

    memory = bench.media_memory(
        short_context_gpu_engine(engine), 64 * 64, vram_growth=vram_growth, probe=lambda: (GIB // 2, 80 * GIB)
    )
    for entry in memory.values():
        assert entry["peak_vram_bytes"] is None and entry["vram_estimate_bytes"] > GIB // 2
        assert "free" in entry["vram_skipped"]


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def bench_run(live_server, tmp_path_factory):
    """The whole bench (`make bench`) on the demo model, measuring the shared server (--base-url)."""
    out = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QWEN3VL_API_KEY", API_KEY)  # the server's key, as a learner would export it
        code = bench.main(
            [
                *("--model", "demo", "--repeats", "1", "--max-tokens", "8", "--health-requests", "5"),
                *("--long-tokens", "256", "--out", str(out), "--media-pixels", "200000"),
                *("--base-url", live_server.base_url),
            ]
        )
    assert code == 0
    return out


def test_without_base_url_the_bench_starts_its_own_server_with_the_bench_context(monkeypatch, tmp_path):
    from helpers import launcher

    started = []

    def start_server(**kwargs):
        started.append(kwargs)
        raise RuntimeError("stand-in: stop before measuring")

    monkeypatch.setattr(launcher, "start_server", start_server)
    monkeypatch.delenv("QWEN3VL_BASE_URL", raising=False)
    with pytest.raises(RuntimeError, match="stand-in"):
        bench.main(["--model", "demo", "--out", str(tmp_path)])
    (call,) = started
    args = call["extra_args"]
    assert args[args.index("--max-model-len") + 1] == str(bench.BENCH_MAX_MODEL_LEN)
    assert int(args[args.index("--max-queue") + 1]) >= 2 * max(bench.CONCURRENCY)


def test_compare_base_url_drives_the_same_load_on_two_running_servers(live_server, tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN3VL_API_KEY", API_KEY)
    url = live_server.base_url
    args = ["--base-url", url, "--compare-base-url", url + "/v1", "--concurrency", "1", "--max-tokens", "2"]
    assert bench.main([*args, "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "compare.json").read_text(encoding="utf-8"))
    assert results["targets"] == ["ours", "other"] and results["startup_s"] == {}  # nothing started
    (level,) = results["levels"]
    assert level["concurrency"] == 1 and level["ours"]["requests"] == level["other"]["requests"] == 8
    assert (tmp_path / "compare.png").read_bytes()[:8] == PNG_SIGNATURE


def test_bench_writes_every_documented_key_with_its_type(bench_run):
    results = json.loads((bench_run / "bench.json").read_text(encoding="utf-8"))
    check_schema(results, SCHEMA)
    assert results["model"] == "demo" and results["demo"] is True
    assert results["latency"]["pairs"] == 3 * results["repeats"]
    assert len(results["latency"]["http_samples_s"]) == results["latency"]["pairs"]
    assert results["latency"]["completion_tokens"] == 8
    on_gpu = results["device"].startswith("cuda")  # "cpu" on this machine: every GPU figure is null
    measured = {k: v for k, v in results["gpu"].items() if not k.startswith("bandwidth")}  # known cards only
    assert all((v is None) == (not on_gpu) for v in measured.values())
    memory = results["media_memory"]
    assert memory["image"]["pictures"] == 4 and memory["video"]["pictures"] == 64
    assert all((m["vram_estimate_bytes"] is None) == (not on_gpu) for m in memory.values())
    assert all(m["peak_vram_bytes"] is not None or m["vram_skipped"] for m in memory.values() if on_gpu)
    assert all(m["peak_rss_bytes"] is None or m["peak_rss_bytes"] > 0 for m in memory.values())


def test_bench_measures_text_at_concurrency_1_4_8_and_one_image_request(bench_run):
    throughput = json.loads((bench_run / "bench.json").read_text(encoding="utf-8"))["throughput"]
    for entry in throughput:
        check_schema(entry, THROUGHPUT_ENTRY)
    assert [(t["kind"], t["concurrency"]) for t in throughput] == [
        ("text", 1),
        ("text", 4),
        ("text", 8),
        ("image", 1),
    ]
    assert all(t["requests"] >= t["concurrency"] for t in throughput)


def test_bench_draws_a_png(bench_run):
    png = bench_run / "bench.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    from PIL import Image

    with Image.open(png) as image:
        assert image.width > image.height > 200


def test_bench_table_names_every_section(bench_run):
    results = json.loads((bench_run / "bench.json").read_text(encoding="utf-8"))
    table = bench.format_table(results)
    for label in (
        "HTTP 开销",
        "首个 token",
        "/health 生成中",
        "吞吐 text 并发 8",
        "吞吐 image",
        "视频解码",
        "内存峰值：最大图片请求",
        "内存峰值：最大视频请求",
        "显存峰值",
        "JSON schema",
    ):
        assert label in table
