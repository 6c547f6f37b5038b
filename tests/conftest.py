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
def demo_model_and_processor(demo_checkpoint):
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(demo_checkpoint)
    model = Qwen3VLForConditionalGeneration.from_pretrained(demo_checkpoint).eval()
    return model, processor


@pytest.fixture(scope="session")
def engine(demo_checkpoint, tmp_path_factory):
    """The demo model behind the real Engine, allowed to read files from a temp media folder."""
    from helpers.config import Settings
    from helpers.engine import Engine

    media = tmp_path_factory.mktemp("media")
    settings = Settings.from_env({}, model="demo", allowed_local_media_path=[media], ui=False)
    return Engine.load(settings, verbose=False)


@pytest.fixture(scope="session")
def media_dir(engine) -> Path:
    return engine.settings.allowed_local_media_path[0]


def generate_ids(
    demo_model_and_processor, messages, logits_processor, seed=None, max_new_tokens=320, tools=None
):
    """New token ids of the demo model under ``logits_processor``: greedy when ``seed`` is None, else T=1."""
    import torch

    model, processor = demo_model_and_processor
    text = processor.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], return_tensors="pt")
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
