"""Shared fixtures: offline mode, the demo checkpoint (built once per run)."""

from __future__ import annotations

import os

# Before anything imports transformers / huggingface_hub: never reach a hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["QWEN3VL_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Servers started by tests skip the Gradio page (importing gradio costs seconds per process);
# tests/test_webui.py turns it on where the page is what is tested.
os.environ.setdefault("QWEN3VL_UI", "0")

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_checkpoint() -> Path:
    from helpers.demo_model import ensure_demo_checkpoint

    return ensure_demo_checkpoint()


@pytest.fixture(scope="session")
def demo_model_and_processor(engine):
    """The real transformers model and processor of the demo checkpoint (the shared engine's: one load)."""
    return engine.model, engine.processor


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """The folder the shared engine and the shared server may read local media from."""
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def engine(demo_checkpoint, media_dir):
    """The demo model behind the real Engine, allowed to read files from ``media_dir``."""
    from helpers.config import Settings
    from helpers.engine import Engine

    settings = Settings.from_env({}, model="demo", allowed_local_media_path=[media_dir], ui=False)
    return Engine.load(settings, verbose=False)


@pytest.fixture(scope="session")
def grammars(engine):
    """The demo vocabulary's grammar compiler and cache (the engine's own: built once per run)."""
    return engine.grammars


# The key of the shared server (``live_server``); requests without it get 401 on /v1.
API_KEY = "test-key-123"


@pytest.fixture(scope="session")
def live_server(media_dir, tmp_path_factory):
    """One real uvicorn server for the whole run: demo model, ``API_KEY``, local media from ``media_dir``.

    Modules that only need *a* server share it; a test that must change a
    server's flags or stop it (queue limits, signals) starts its own.
    """
    from helpers import launcher

    server = launcher.start_server(
        model="demo",
        port=launcher.free_port(),
        extra_args=["--api-key", API_KEY, "--allowed-local-media-path", str(media_dir)],
        run_dir=tmp_path_factory.mktemp("run"),
        timeout=180,
    )
    yield server
    launcher.stop_server(server)


@pytest.fixture(scope="session")
def live_http(live_server):
    """A requests session for ``live_server``: carries the key; ``.base`` is the server's URL."""
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {API_KEY}"
    session.base = live_server.base_url
    yield session
    session.close()


def generate_ids(
    demo_model_and_processor, messages, logits_processor, seed=None, max_new_tokens=320, tools=None
):
    """New token ids of the demo model under ``logits_processor``: greedy when ``seed`` is None, else T=1."""
    import torch

    model, processor = demo_model_and_processor
    text = processor.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], return_tensors="pt").to(model.device)
    if seed is None:
        sampling = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    else:
        torch.manual_seed(seed)
        sampling = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0}
    with torch.inference_mode():
        out = model.generate(
            **inputs, max_new_tokens=max_new_tokens, logits_processor=[logits_processor], **sampling
        )
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def write_clip(
    path: Path,
    seconds: float = 3.0,
    fps: int = 8,
    size: tuple[int, int] = (128, 96),
    first_pts: int = 0,
    rotation: int = 0,
) -> Path:
    """Encode a small H.264 clip with PyAV: a white bar moving right, a top strip whose red is 8 x index.

    ``first_pts`` (in frames) makes the stream start later than 0 s; ``rotation``
    stores a display matrix (degrees counter-clockwise, as phones record portrait clips).
    The container follows the suffix (``.mp4``, ``.ts``, ...).
    """
    import av
    import numpy as np

    width, height = size
    with av.open(str(path), "w") as box:
        stream = box.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(round(seconds * fps)):
            frame = np.zeros((height, width, 3), np.uint8)
            frame[:, :, 0] = min(255, i * 8)
            x = (i * 4) % (width - 16)
            frame[16:, x : x + 16] = 255
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = first_pts + i
            for packet in stream.encode(picture):
                box.mux(packet)
        for packet in stream.encode():
            box.mux(packet)
    return path


def write_image(path: Path, size: tuple[int, int] = (320, 240), color=(200, 30, 30)) -> Path:
    from PIL import Image

    Image.new("RGB", size, color).save(path)
    return path


class MediaServer:
    """A real HTTP server on 127.0.0.1 serving canned responses, recording every request path."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.hits: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                owner.hits.append(self.path)
                status, headers, body = owner.routes.get(self.path, (404, {}, b"not found"))
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, body: bytes, status: int = 200, **headers: str) -> str:
        self.routes[path] = (status, {k.replace("_", "-"): v for k, v in headers.items()}, body)
        return self.url(path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def media_server():
    server = MediaServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium for one test module's pages (tests/chromium.py)."""
    from chromium import launch

    with launch() as chromium:
        yield chromium
