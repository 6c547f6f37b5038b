"""The web page (/ui) in a real headless Chromium: the pictures it offers, the clear button, upload deletion.

README promises: "🗑 清空对话" empties the chat and deletes that session's uploads;
stopping the server deletes every session's uploads; the tutorial's pictures can
be picked. The server runs with TMPDIR in a test folder, so its upload folder
(``qwen3vl-webui-*``) can be watched from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from chromium import new_tab

from helpers import launcher
from helpers.assets import CAT_PHOTO_PATH, IMAGES_DIR


def eventually(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll ``condition`` (files the server deletes on its own) until it holds, or fail."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    """Our server with its page, no key (no login step); its temporary files under ``temp``."""
    temp = tmp_path_factory.mktemp("server-tmp")
    server = launcher.start_server(
        model="demo",
        port=launcher.free_port(),
        extra_args=["--ui", "--default-max-new-tokens", "8"],
        env={"TMPDIR": str(temp)},
        run_dir=tmp_path_factory.mktemp("run"),
        timeout=180,
    )
    yield server, temp
    launcher.stop_server(server)


@pytest.fixture(scope="module")
def page(page_server, browser):
    with new_tab(browser, 1280, 900) as tab:
        yield tab


def session_folders(temp: Path) -> list[Path]:
    return sorted(p for p in temp.glob("qwen3vl-webui-*/sessions/*") if p.is_dir())


def test_the_page_offers_the_tutorials_pictures(page_server):
    server, _ = page_server
    config = requests.get(server.base_url + "/ui/config", timeout=60).json()
    offered = {
        str(choice[0] if isinstance(choice, list) else choice)
        for component in config["components"]
        for choice in component.get("props", {}).get("choices") or []
    }
    pictures = {p.name for p in IMAGES_DIR.iterdir() if p.suffix in (".jpg", ".png")}
    assert {"cat.jpg", "shapes_scene.png", "ocr_sample.png"} <= pictures <= offered


def test_clear_empties_the_chat_and_deletes_the_sessions_uploads_then_stop_deletes_the_rest(
    page_server, page
):
    server, temp = page_server
    page.goto(server.base_url + "/ui/")
    page.wait_for_selector("#question textarea")
    page.set_input_files("#question input[type=file]", [str(CAT_PHOTO_PATH)])
    page.wait_for_function(
        "document.querySelectorAll('#question .thumbnail-item, #question img').length >= 1"
    )
    page.fill("#question textarea", "这是什么？")
    page.press("#question textarea", "Enter")
    page.wait_for_function("document.querySelector('#status-line').innerText.includes('已完成 1')")

    (folder,) = session_folders(temp)  # this tab's session keeps a copy of its upload
    assert [p.suffix for p in folder.iterdir()] == [".jpg"]
    page.click("#clear")
    page.wait_for_function("document.querySelectorAll(\"#chat [data-testid='bot']\").length === 0")
    eventually(lambda: not folder.exists())  # the session's uploads went with it

    (upload_root,) = temp.glob("qwen3vl-webui-*")
    assert any(upload_root.rglob("*.jpg"))  # Gradio's own copy of the upload is still in there
    launcher.stop_server(server)
    assert not upload_root.exists()  # every upload goes with the process
