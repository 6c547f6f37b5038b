"""The API server, in-process (TestClient) and as a real uvicorn process started by the launcher."""

from __future__ import annotations

import base64
import io
import json
import os
import threading

import pytest
import requests
from conftest import API_KEY, write_clip, write_image
from fastapi.testclient import TestClient
from PIL import Image

from helpers.server import create_app

TEXT = [{"role": "user", "content": "Hello, who are you?"}]


def png_data_uri(size=(64, 48)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (0, 120, 255)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def chat_body(**extra):
    return {"model": "demo", "messages": TEXT, "max_tokens": 16, "temperature": 0, **extra}


def sse_events(text: str) -> list:
    events = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def assert_error(response, status: int, fragment: str = ""):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment.lower() in error["message"].lower(), error["message"]
    assert "Traceback" not in response.text
    return error


# --------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(engine=engine)) as c:
        yield c


def post(live_http, path, body, **kwargs):
    return live_http.post(live_http.base + path, json=body, timeout=60, **kwargs)


# ------------------------------------------------------------------------ shape
def test_health_reports_the_loaded_model(client, engine):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["model"] == "demo" and body["demo"] is True
    assert (body["device"], body["dtype"]) == (engine.device, engine.info()["dtype"])  # cpu/float32 here
    assert {"running", "waiting", "max_waiting"} <= set(body["queue"])


def test_models_are_listed_in_openai_format(client):
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert body["data"][0]["id"] == "demo" and body["data"][0]["object"] == "model"


def test_root_redirects_to_the_docs_when_the_web_page_is_off(client):
    # With the page on, / goes to /ui/ (tests/test_webui.py, in a fresh interpreter).
    assert client.get("/", follow_redirects=False).headers["location"] == "/docs"
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "ChatCompletionRequest" in schema["components"]["schemas"]


def test_chat_completion_has_the_openai_shape_and_usage_adds_up(client):
    body = client.post("/v1/chat/completions", json=chat_body()).json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "demo" and isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    assert body["response"] == choice["message"]["content"]
    usage = body["usage"]
    assert usage["completion_tokens"] == 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_max_completion_tokens_wins_over_max_tokens(client):
    body = client.post("/v1/chat/completions", json=chat_body(max_tokens=30, max_completion_tokens=5)).json()
    assert body["usage"]["completion_tokens"] == 5


def test_stop_strings_end_the_answer(client):
    full = client.post("/v1/chat/completions", json=chat_body(max_tokens=32)).json()["response"]
    stop = full[8:12]
    body = client.post("/v1/chat/completions", json=chat_body(max_tokens=32, stop=stop)).json()
    assert body["response"] == full[: full.index(stop)]
    assert body["choices"][0]["finish_reason"] == "stop"


def test_seeded_sampling_is_reproducible(client):
    body = chat_body(temperature=1.0, seed=3)
    first = client.post("/v1/chat/completions", json=body).json()["response"]
    assert client.post("/v1/chat/completions", json=body).json()["response"] == first


def test_finished_requests_count_as_completed_not_cancelled(client):
    import time

    before = client.get("/health").json()["queue"]
    assert client.post("/v1/chat/completions", json=chat_body(max_tokens=4)).status_code == 200
    assert client.post("/v1/chat/completions", json=chat_body(max_tokens=4, stream=True)).status_code == 200
    assert client.post("/generate", json={"messages": TEXT, "max_tokens": 4}).status_code == 200
    deadline = time.monotonic() + 10
    while (after := client.get("/health").json()["queue"])["running"] and time.monotonic() < deadline:
        time.sleep(0.01)  # the slot is released from the generation thread
    assert after["completed"] == before["completed"] + 3
    assert after["cancelled"] == before["cancelled"]


def test_generate_route_returns_only_the_text(client):
    body = client.post("/generate", json={"messages": TEXT, "max_tokens": 8, "temperature": 0}).json()
    assert set(body) == {"response"} and body["response"]


def test_streaming_chunks_follow_openai_and_join_to_the_plain_answer(client):
    plain = client.post("/v1/chat/completions", json=chat_body()).json()
    response = client.post(
        "/v1/chat/completions", json=chat_body(stream=True, stream_options={"include_usage": True})
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = sse_events(response.text)
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    assert len([p for p in content if p]) > 3
    assert "".join(content) == plain["response"]
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]


def test_streaming_without_include_usage_sends_no_usage(client):
    chunks = sse_events(client.post("/v1/chat/completions", json=chat_body(stream=True)).text)
    assert all("usage" not in c for c in chunks)


def test_image_and_video_parts_in_every_shape(client, media_dir):
    write_image(media_dir / "photo.png")
    write_clip(media_dir / "clip.mp4", seconds=2.0)
    contents = [
        [{"type": "image_url", "image_url": {"url": png_data_uri()}}, {"type": "text", "text": "?"}],
        [{"type": "image", "image": "photo.png"}, {"type": "text", "text": "?"}],
        [{"type": "image", "image": f"file://{media_dir}/photo.png"}],
        [{"type": "video", "video": "clip.mp4", "fps": 1.0, "max_pixels": 128 * 32 * 32}],
        [{"type": "video_url", "video_url": {"url": "clip.mp4"}}, {"type": "text", "text": "?"}],
    ]
    text_only = client.post("/v1/chat/completions", json=chat_body(max_tokens=2)).json()["usage"][
        "prompt_tokens"
    ]
    for content in contents:
        body = chat_body(max_tokens=2, messages=[{"role": "user", "content": content}])
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["prompt_tokens"] > text_only  # the pixels became tokens


def test_image_url_served_by_a_local_http_server(engine, media_server):
    media_server.add("/demo.png", base64.b64decode(png_data_uri().split(",")[1]), content_type="image/png")
    permissive = engine.with_settings(allow_private_network_media=True)
    with TestClient(create_app(engine=permissive)) as c:
        content = [{"type": "image", "image": media_server.url("/demo.png")}, {"type": "text", "text": "?"}]
        response = c.post(
            "/v1/chat/completions", json=chat_body(messages=[{"role": "user", "content": content}])
        )
    assert response.status_code == 200, response.text
    assert media_server.hits == ["/demo.png"]


# --------------------------------------------------------------------- bad input
BAD_REQUESTS = [
    ({}, 400, "messages"),
    ({"messages": []}, 400, "non-empty"),
    ({"messages": "hi"}, 400, "messages"),
    ({"messages": [{"content": "no role"}]}, 400, "role"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "role"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "content"),
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, 400, "unsupported type"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]}, 400, "string"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400, "url"),
    (
        {"messages": [{"role": "user", "content": [{"type": "image", "image": "data:image/png;base64,!!"}]}]},
        400,
        "base64",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": [{"type": "image", "image": "data:image/png;base64,aGVsbG8="}]}
            ]
        },
        400,
        "could not be read",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "video", "video": "ftp://x/y.mp4"}]}]},
        400,
        "scheme",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "video", "video": "clip.mp4", "fps": -1}]}]},
        400,
        "fps",
    ),
    ({"messages": TEXT, "max_tokens": 0}, 400, "max_tokens"),
    ({"messages": TEXT, "max_tokens": 100000}, 400, "max_tokens"),
    ({"messages": TEXT, "max_tokens": "many"}, 400, "max_tokens"),
    ({"messages": TEXT, "temperature": -1}, 400, "temperature"),
    ({"messages": TEXT, "temperature": 2.5}, 400, "temperature"),
    ({"messages": TEXT, "top_p": 0}, 400, "top_p"),
    ({"messages": TEXT, "top_p": 7}, 400, "top_p"),
    ({"messages": TEXT, "top_k": -3}, 400, "top_k"),
    ({"messages": TEXT, "seed": -5}, 400, "seed"),
    ({"messages": TEXT, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"messages": TEXT, "stop": ""}, 400, "stop"),
    ({"messages": TEXT, "n": 3}, 400, "n=1"),
    ({"messages": TEXT, "stream": "yes please"}, 400, "stream"),
    (
        {"messages": [{"role": "user", "content": [{"type": "image", "image": png_data_uri()}] * 5}]},
        400,
        "at most 4",
    ),
]


@pytest.mark.parametrize(("body", "status", "fragment"), BAD_REQUESTS)
def test_bad_requests_get_a_clear_4xx(client, body, status, fragment):
    assert_error(client.post("/v1/chat/completions", json=body), status, fragment)


def test_the_server_keeps_serving_after_the_bad_requests_above(client):
    assert client.post("/v1/chat/completions", json=chat_body(max_tokens=2)).status_code == 200


def test_invalid_json_is_400(client):
    response = client.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(response, 400, "not valid JSON")


def test_wrong_method_and_unknown_route_use_the_error_shape(client):
    assert_error(client.get("/v1/chat/completions"), 405)
    assert_error(client.get("/v1/nothing-here"), 404)


def test_oversized_body_is_413(engine):
    small = engine.with_settings(max_request_bytes=10_000)
    with TestClient(create_app(engine=small)) as c:
        huge = [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 20_000}}]
        response = c.post(
            "/v1/chat/completions", json=chat_body(messages=[{"role": "user", "content": huge}])
        )
        assert_error(response, 413, "larger than")
        assert c.post("/v1/chat/completions", json=chat_body(max_tokens=2)).status_code == 200


def test_oversized_chunked_body_without_content_length_is_413(engine):
    small = engine.with_settings(max_request_bytes=10_000)

    def body():
        for _ in range(20):
            yield b" " * 1000
        yield json.dumps(chat_body()).encode()

    with TestClient(create_app(engine=small)) as c:
        response = c.post(
            "/v1/chat/completions", content=body(), headers={"content-type": "application/json"}
        )
        assert_error(response, 413, "larger than")
        assert c.get("/health").status_code == 200


def test_decompression_bomb_is_413(client):
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    body = chat_body(
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}}]}]
    )
    assert_error(client.post("/v1/chat/completions", json=body), 413, "pixels")


def test_corrupt_video_is_400(client, media_dir):
    (media_dir / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))
    body = chat_body(messages=[{"role": "user", "content": [{"type": "video", "video": "broken.mp4"}]}])
    assert_error(client.post("/v1/chat/completions", json=body), 400, "video")


def test_model_not_ready_is_503(demo_checkpoint):
    gate = threading.Event()

    def slow_loader(settings):
        gate.wait(30)
        raise RuntimeError("stand-in loader stopped")

    from helpers.config import Settings

    with TestClient(create_app(Settings.from_env({}, model="demo"), loader=slow_loader)) as c:
        assert c.get("/health").status_code == 503 and c.get("/health").json()["status"] == "loading"
        assert_error(c.post("/v1/chat/completions", json=chat_body()), 503, "loading")
        gate.set()


# ---------------------------------------------------------- security (real HTTP)
def test_api_key_is_required_on_v1_and_generate_but_not_health(live_server):
    base = live_server.base_url
    assert requests.get(f"{base}/health", timeout=10).status_code == 200
    for method, path in (("get", "/v1/models"), ("post", "/v1/chat/completions"), ("post", "/generate")):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
            response = requests.request(method, base + path, json=chat_body(), headers=headers, timeout=10)
            assert_error(response, 401, "API key")
            assert response.headers["WWW-Authenticate"] == "Bearer"  # RFC 6750: how to authenticate
    ok = requests.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("source", "status"),
    [
        ("../../../../etc/passwd", 403),
        ("/etc/passwd", 403),
        ("file:///etc/passwd", 403),
        ("escape.png", 403),  # a symlink pointing outside the allowed folder
        ("http://127.0.0.1:1/x.png", 403),
        ("http://localhost/x.png", 403),
        ("http://[::1]/x.png", 403),
        ("http://169.254.169.254/latest/meta-data/", 403),
        ("http://10.0.0.1/x.png", 403),
        ("not-there.png", 400),
    ],
)
def test_media_refusals_over_http(live_http, media_dir, tmp_path_factory, source, status):
    outside = write_image(tmp_path_factory.mktemp("outside") / "secret.png")
    if not (media_dir / "escape.png").is_symlink():
        os.symlink(outside, media_dir / "escape.png")
    body = chat_body(messages=[{"role": "user", "content": [{"type": "image", "image": source}]}])
    assert_error(post(live_http, "/v1/chat/completions", body), status)


def test_the_real_server_keeps_serving_after_the_refusals_above(live_http):
    assert post(live_http, "/v1/chat/completions", chat_body(max_tokens=2)).status_code == 200


def test_hostnames_resolving_to_private_addresses_are_refused(engine, monkeypatch):
    import socket

    def fake_getaddrinfo(host, port, *args, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", port or 80))]

    def no_connect(*args, **kwargs):
        raise AssertionError("connected")

    from urllib3.util import connection

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    monkeypatch.setattr(connection, "create_connection", no_connect)
    with TestClient(create_app(engine=engine)) as c:
        content = [{"type": "image_url", "image_url": {"url": "http://intranet.example/cat.png"}}]
        response = c.post(
            "/v1/chat/completions", json=chat_body(messages=[{"role": "user", "content": content}])
        )
    assert_error(response, 403, "non-public address")


# -------------------------------------------------------------- concurrency
def open_stream(live_http, max_tokens=2048):
    body = chat_body(max_tokens=max_tokens, stream=True)
    response = live_http.post(live_http.base + "/v1/chat/completions", json=body, stream=True, timeout=60)
    assert response.status_code == 200
    lines = response.iter_lines()
    first = next(line for line in lines if line)  # generation has begun
    assert first.startswith(b"data: ")
    return response, lines


def wait_health(live_http, predicate, timeout=60):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = live_http.get(live_http.base + "/health", timeout=10).json()
        if predicate(body):
            return body
        time.sleep(0.05)
    raise AssertionError(f"health never satisfied the condition: {body}")


def test_health_answers_while_a_long_generation_runs(live_http):
    response, lines = open_stream(live_http)
    body = live_http.get(live_http.base + "/health", timeout=10).json()
    assert body["status"] == "ok" and body["queue"]["running"] == 1
    next(lines)  # the stream is still producing tokens after /health answered
    response.close()
    wait_health(live_http, lambda b: b["queue"]["running"] == 0)


def test_a_disconnected_stream_stops_its_generation_and_frees_the_model(live_http):
    before = live_http.get(live_http.base + "/health", timeout=10).json()["queue"]
    response, _ = open_stream(live_http, max_tokens=2048)
    response.close()
    after = wait_health(live_http, lambda b: b["queue"]["running"] == 0)["queue"]
    assert after["cancelled"] == before["cancelled"] + 1
    reply = post(live_http, "/v1/chat/completions", chat_body(max_tokens=4))
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 4


def test_a_client_that_leaves_a_plain_request_stops_its_generation(live_http, live_server):
    import socket

    before = live_http.get(live_http.base + "/health", timeout=10).json()["queue"]
    body = json.dumps(chat_body(max_tokens=2048)).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection((live_server.host, live_server.port)) as sock:
        sock.sendall(head.encode() + body)
        wait_health(live_http, lambda b: b["queue"]["running"] == 1)
    after = wait_health(live_http, lambda b: b["queue"]["running"] == 0)["queue"]
    assert after["cancelled"] == before["cancelled"] + 1
    assert post(live_http, "/v1/chat/completions", chat_body(max_tokens=2)).status_code == 200


def test_many_normal_answers_all_count_as_completed(live_http):
    before = live_http.get(live_http.base + "/health", timeout=10).json()["queue"]
    for i in range(10):
        assert post(live_http, "/v1/chat/completions", chat_body(max_tokens=1 + i % 5)).status_code == 200
        assert (
            post(live_http, "/v1/chat/completions", chat_body(max_tokens=3, stream=True)).status_code == 200
        )
    after = wait_health(live_http, lambda b: b["queue"]["running"] == 0)["queue"]
    assert after["completed"] == before["completed"] + 20
    assert after["cancelled"] == before["cancelled"]


# --------------------------------------------------------- clients that exist
def test_openai_sdk_sync_and_streaming(live_server):
    from openai import OpenAI

    client = OpenAI(base_url=live_server.base_url + "/v1", api_key=API_KEY)
    reply = client.chat.completions.create(model="demo", messages=TEXT, max_tokens=12, temperature=0)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 12
    stream = client.chat.completions.create(
        model="demo",
        messages=TEXT,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == reply.choices[0].message.content
    )
    assert chunks[-1].usage.total_tokens == reply.usage.total_tokens
    assert [m.id for m in client.models.list()] == ["demo"]


def test_openai_sdk_raises_the_right_errors(live_server):
    import openai

    client = openai.OpenAI(base_url=live_server.base_url + "/v1", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="demo", messages=TEXT, temperature=9)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=live_server.base_url + "/v1", api_key="nope", max_retries=0).models.list()


def test_the_original_tutorial_clients_pass_against_the_real_server(live_server, media_dir):
    """helpers.original_clients (test_simple_api.py / test_video_api.py, as shipped) end to end."""
    import subprocess
    import sys

    clip = write_clip(media_dir / "test_video.mp4", seconds=2.0)
    env = {**os.environ, "QWEN3VL_API_KEY": API_KEY}
    args = ["--base-url", live_server.base_url, "--video", str(clip), "--max-tokens", "4"]
    run = subprocess.run(
        [sys.executable, "-m", "helpers.original_clients", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    for check in ("健康检查", "文本对话", "图像对话", "视频对话"):
        assert f"{check}: ✅ 通过" in run.stdout, run.stdout
    assert "模型: demo" in run.stdout
