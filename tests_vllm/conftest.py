"""Fixtures for the vLLM contract tests (``make test-vllm``): vLLM and our server on the demo checkpoint.

These tests need the vLLM environment (``make vllm-setup``); ``make test`` does
not collect this folder. Both servers listen on 127.0.0.1 only.
"""

from __future__ import annotations

import os

# Before anything imports transformers / huggingface_hub: never reach a hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["QWEN3VL_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tests choose their servers themselves.
os.environ.pop("QWEN3VL_BASE_URL", None)
os.environ.pop("QWEN3VL_API_KEY", None)

from collections.abc import Iterator

import pytest

from helpers import launcher
from helpers.assets import IMAGES_DIR
from helpers.client import openai_client


@pytest.fixture(scope="session")
def demo_settings():
    from helpers.config import Settings

    return Settings.from_env({}, model="demo", allowed_local_media_path=[IMAGES_DIR])


@pytest.fixture(scope="session")
def vllm_url(demo_settings) -> Iterator[str]:
    """vLLM (CPU build) serving the demo checkpoint, started once for the whole run (~2 min).

    ``QWEN3VL_TEST_VLLM_URL`` reuses a vLLM you started yourself with the same
    settings (``python -m helpers.vllm_server --model demo --allowed-local-media-path images``)
    while you work on these tests.
    """
    from helpers.vllm_server import start_vllm, stop_vllm

    running = os.environ.get("QWEN3VL_TEST_VLLM_URL")
    if running:
        yield running.rstrip("/")
        return

    server = start_vllm(demo_settings, port=launcher.free_port(), run_dir=launcher.RUN_DIR)
    yield server.base_url
    stop_vllm(server)


@pytest.fixture(scope="session")
def ours_url(demo_settings) -> Iterator[str]:
    """Our server on the same checkpoint and media folder."""
    server = launcher.start_server(
        model="demo",
        port=launcher.free_port(),
        extra_args=["--allowed-local-media-path", str(IMAGES_DIR), "--log-level", "warning"],
        timeout=300,
    )
    yield server.base_url
    launcher.stop_server(server)


@pytest.fixture(scope="session")
def vllm(vllm_url):
    return openai_client(vllm_url)


@pytest.fixture(scope="session")
def ours(ours_url):
    return openai_client(ours_url)


@pytest.fixture(params=["ours", "vllm"])
def server(request):
    """Each contract test runs against both servers: (name, base URL, openai client)."""
    url = request.getfixturevalue(f"{request.param}_url")
    return request.param, url, request.getfixturevalue(request.param)
