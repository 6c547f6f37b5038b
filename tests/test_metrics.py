"""``GET /metrics``: Prometheus text with vLLM's names, counters that move by exactly what happened."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import requests
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from helpers import launcher
from helpers.metrics import ServerMetrics, parse_metrics, read_metrics, total
from helpers.server import create_app

API_KEY = "metrics-key-7"
TEXT = [{"role": "user", "content": "Hello, who are you?"}]
CHAT = "/v1/chat/completions"
# What a vLLM dashboard reads (vLLM 0.32, vllm/v1/metrics/loggers.py), as the parser names the families.
VLLM_FAMILIES = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:request_queue_time_seconds": "histogram",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:request_success": "counter",
    "vllm:admission_rejections": "counter",
    "http_requests": "counter",
}


def chat_body(**extra):
    return {"model": "demo", "messages": TEXT, "max_tokens": 5, "temperature": 0, **extra}


def http_count(samples, status: int, handler: str = CHAT, method: str = "POST") -> float:
    return total(samples, "http_requests_total", status=str(status), handler=handler, method=method)


# ------------------------------------------------------------------ in-process
@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(engine=engine)) as c:
        yield c


def scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse_metrics(response.text)


def test_the_scrape_parses_and_uses_vllm_names_and_labels(client):
    text = client.get("/metrics").text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert {name: families[name].type for name in VLLM_FAMILIES} == VLLM_FAMILIES
    running = families["vllm:num_requests_running"].samples[0]
    assert running.labels == {"model_name": "demo", "engine": "0"} and running.value == 0
    reasons = {s.labels["finished_reason"] for s in families["vllm:request_success"].samples}
    assert {"stop", "length", "abort"} <= reasons
    assert not [name for name in families if "gpu_memory" in name]  # a CPU has no GPU memory to report


def test_counters_move_by_exactly_what_the_requests_did(client):
    before = scrape(client)
    plain = client.post(CHAT, json=chat_body())
    assert plain.status_code == 200
    assert client.post(CHAT, json=chat_body(min_p=0.1)).status_code == 400
    body = chat_body(max_tokens=3, stream=True, stream_options={"include_usage": True})
    events = [
        line[6:] for line in client.post(CHAT, json=body).text.splitlines() if line.startswith("data: {")
    ]
    streamed = json.loads(events[-1])["usage"]
    after = scrape(client)

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    assert http_count(after, 200) - http_count(before, 200) == 2
    assert http_count(after, 400) - http_count(before, 400) == 1
    prompt = plain.json()["usage"]["prompt_tokens"] + streamed["prompt_tokens"]
    assert delta("vllm:prompt_tokens_total") == prompt
    assert delta("vllm:generation_tokens_total") == 5 + 3
    assert delta("vllm:request_success_total", finished_reason="length") == 2
    assert delta("vllm:request_success_total", finished_reason="stop") == 0
    assert delta("vllm:request_success_total", finished_reason="abort") == 0
    for histogram in ("e2e_request_latency", "time_to_first_token", "request_queue_time"):
        assert delta(f"vllm:{histogram}_seconds_count") == 2
        assert delta(f"vllm:{histogram}_seconds_sum") >= 0
    assert delta("vllm:admission_rejections_total") == 0
    assert http_count(after, 200, "/metrics", "GET") == 0  # scrapes are not counted, as in vLLM


def test_each_app_has_its_own_registry(client, engine):
    with TestClient(create_app(engine=engine)) as other:
        before = scrape(client)
        assert other.post(CHAT, json=chat_body(max_tokens=1)).status_code == 200
        assert http_count(scrape(other), 200) == 1
        assert http_count(scrape(client), 200) == http_count(before, 200)


def test_gpu_memory_is_reported_for_a_model_on_a_gpu_only(engine):
    class OnGpu:
        device = "cuda:0"

    metrics = ServerMetrics("demo", gpu_memory=lambda device: (3 * 2**30, 4 * 2**30))
    loaded = {"engine": engine}
    metrics.watch(running=lambda: 0, waiting=lambda: 0, engine=lambda: loaded["engine"])
    assert "gpu_memory" not in metrics.exposition().decode()  # the real engine is on the CPU
    loaded["engine"] = OnGpu()
    samples = parse_metrics(metrics.exposition().decode())
    labels = {"model_name": "demo", "device": "cuda:0"}
    assert total(samples, "qwen3vl:gpu_memory_allocated_bytes", **labels) == 3 * 2**30
    assert total(samples, "qwen3vl:gpu_memory_reserved_bytes", **labels) == 4 * 2**30


# --------------------------------------------------------- real uvicorn process
@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """One generation, one waiting place, an API key."""
    server = launcher.start_server(
        model="demo",
        port=launcher.free_port(),
        extra_args=["--max-queue", "1", "--api-key", API_KEY],
        run_dir=tmp_path_factory.mktemp("metrics"),
        timeout=120,
    )
    yield server
    launcher.stop_server(server)


def live_scrape(server) -> dict:
    return read_metrics(server.base_url, {"Authorization": f"Bearer {API_KEY}"})


def queue_stats(server) -> dict:
    return requests.get(server.base_url + "/health", timeout=10).json()["queue"]


def wait_queue(server, predicate, timeout=60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queue = queue_stats(server)
        if predicate(queue):
            return queue
        time.sleep(0.05)
    raise AssertionError(f"the queue never satisfied the condition: {queue}")


def test_metrics_need_the_api_key(live):
    refused = requests.get(live.base_url + "/metrics", timeout=10)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    wrong = requests.get(live.base_url + "/metrics", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    assert total(live_scrape(live), "vllm:num_requests_running") == 0


def test_queue_gauges_429s_and_cancellations_over_http(live):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    before, health_before = live_scrape(live), queue_stats(live)
    body = chat_body(max_tokens=2048, stream=True)
    running = requests.post(live.base_url + CHAT, json=body, headers=auth, stream=True, timeout=60)
    lines = running.iter_lines()
    assert next(line for line in lines if line).startswith(b"data: ")  # generating
    payload = json.dumps(chat_body(max_tokens=2)).encode()
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode()
    with socket.create_connection((live.host, live.port)) as queued:  # a client that will leave while queued
        queued.sendall(head + payload)
        wait_queue(live, lambda q: q["waiting"] == 1)
        busy = live_scrape(live)
        assert total(busy, "vllm:num_requests_running") == 1 and total(busy, "vllm:num_requests_waiting") == 1
        full = requests.post(live.base_url + CHAT, json=chat_body(), headers=auth, timeout=60)
        assert full.status_code == 429
    left = wait_queue(live, lambda q: q["waiting"] == 0)
    assert left["cancelled"] == health_before["cancelled"] + 1 and left["running"] == 1
    assert total(live_scrape(live), "vllm:request_success_total", finished_reason="abort") == (
        total(before, "vllm:request_success_total", finished_reason="abort") + 1
    )
    running.close()  # the streaming client leaves mid-answer
    done = wait_queue(live, lambda q: q["running"] == 0)
    after = live_scrape(live)

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    assert done["cancelled"] == health_before["cancelled"] + 2
    assert done["completed"] == health_before["completed"]
    assert delta("vllm:request_success_total", finished_reason="abort") == 2  # the same count as /health
    assert delta("vllm:request_success_total", finished_reason="length") == 0
    assert delta("vllm:admission_rejections_total", reason="max_num_queued_reqs") == 1
    assert http_count(after, 429) - http_count(before, 429) == 1
    assert delta("vllm:request_queue_time_seconds_count") == 1  # only the stream got the model
    assert total(after, "vllm:num_requests_running") == 0 and total(after, "vllm:num_requests_waiting") == 0


def test_a_burst_of_requests_is_counted_once_each(live):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    before = live_scrape(live)
    codes: list[int] = []

    def ask() -> None:
        codes.append(
            requests.post(
                live.base_url + CHAT, json=chat_body(max_tokens=4), headers=auth, timeout=120
            ).status_code
        )

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = live_scrape(live)
    assert set(codes) <= {200, 429}
    served, refused = codes.count(200), codes.count(429)
    assert http_count(after, 200) - http_count(before, 200) == served
    assert http_count(after, 429) - http_count(before, 429) == refused
    assert (
        total(after, "vllm:admission_rejections_total") - total(before, "vllm:admission_rejections_total")
        == refused
    )
    assert (
        total(after, "vllm:generation_tokens_total") - total(before, "vllm:generation_tokens_total")
        == 4 * served
    )
