"""The web chat page (/ui): its helpers, the server's mount, and the page itself in a real headless Chromium.

The browser is Debian's ``chromium`` driven by Playwright for Python (``make
setup-dev`` installs both). Every request the page makes to anything but
127.0.0.1 is refused and recorded, and each test checks that there was none.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from chromium import new_tab
from PIL import Image
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from helpers import launcher
from helpers.assets import CAT_PHOTO_PATH
from helpers.config import Settings
from helpers.launcher import REPO_ROOT
from helpers.webui import Limits, UiError, check_media, error_message, grounding_overlay, own_url

API_KEY = "webui-test-key"
MAX_MEDIA_BYTES = 1_000_000
MAX_IMAGE_PIXELS = 4_000_000
SCREENSHOTS = REPO_ROOT / "results" / "webui"  # git-ignored; look at them after a change to the page


# ------------------------------------------------------------------ no browser
@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            413,
            '{"error": {"message": "media is larger than the 1 MB limit", "type": "x"}}',
            "media is larger",
        ),
        (400, '{"detail": "Not Found"}', "Not Found"),
        (400, '{"object": "error", "message": "vLLM says no"}', "vLLM says no"),
        (502, "<html>Bad Gateway</html>", "<html>Bad Gateway</html>"),
    ],
)
def test_error_bodies_become_one_readable_line(status, body, expected):
    message = error_message(status, body.encode())
    assert expected in message
    assert f"HTTP {status}" in message
    assert "Traceback" not in message


def test_own_url_reaches_a_server_listening_on_every_interface():
    assert own_url("0.0.0.0", 6006) == "http://127.0.0.1:6006"
    assert own_url("::", 6006) == "http://[::1]:6006"
    assert own_url("127.0.0.1", 8000) == "http://127.0.0.1:8000"


def test_uploads_over_the_limits_are_refused_before_sending(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 2048)
    with pytest.raises(UiError, match="太大"):
        check_media([big], Limits(max_media_bytes=1024))
    with pytest.raises(UiError, match="最多 1 张图片"):
        check_media([CAT_PHOTO_PATH, CAT_PHOTO_PATH], Limits(max_images=1))
    with pytest.raises(UiError, match="不支持的文件类型"):
        check_media([tmp_path / "notes.txt"], Limits())
    check_media([CAT_PHOTO_PATH], Limits())  # within every limit: no error


def test_grounding_answers_are_drawn_on_the_picture():
    answer = '```json\n[{"bbox_2d": [100, 100, 600, 900], "label": "cat"}]\n```'
    drawn = grounding_overlay(answer, CAT_PHOTO_PATH)
    with Image.open(CAT_PHOTO_PATH) as original:
        assert drawn is not None and drawn.size == original.size
        assert drawn.tobytes() != original.convert("RGB").tobytes()
    assert grounding_overlay("a cat on a sofa", CAT_PHOTO_PATH) is None
    assert grounding_overlay(answer, None) is None


def test_no_ui_flag_turns_the_page_off_and_other_switches_still_parse():
    import argparse

    parser = argparse.ArgumentParser()
    Settings.add_arguments(parser)
    assert Settings.from_args(parser.parse_args([]), environ={}).ui is True
    assert Settings.from_args(parser.parse_args(["--no-ui"]), environ={}).ui is False
    assert Settings.from_args(parser.parse_args([]), environ={"QWEN3VL_UI": "0"}).ui is False
    on = Settings.from_args(parser.parse_args(["--allow-private-network-media"]), environ={})
    assert on.allow_private_network_media is True


def test_gradio_is_imported_only_with_the_ui_and_root_redirects_to_the_page():
    # A fresh interpreter: this test process may have imported gradio already.
    code = """
import sys
from fastapi.testclient import TestClient
from helpers.config import Settings
from helpers.server import create_app
for ui in (False, True):
    client = TestClient(create_app(Settings(model="demo", ui=ui)))  # not entered: no model load
    root = client.get("/", follow_redirects=False)
    page = client.get("/ui/").status_code
    print(ui, root.status_code, root.headers["location"], page, "gradio" in sys.modules)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    ).stdout.splitlines()
    assert out == ["False 307 /docs 404 False", "True 307 /ui/ 200 True"]


# --------------------------------------------------------------------- servers
def _start(tmp_path_factory, *extra: str) -> launcher.ServerProcess:
    return launcher.start_server(
        model="demo",
        port=launcher.free_port(),
        extra_args=[
            "--ui",
            "--default-max-new-tokens",
            "24",
            "--max-media-bytes",
            str(MAX_MEDIA_BYTES),
            "--max-image-input-pixels",
            str(MAX_IMAGE_PIXELS),
            *extra,
        ],
        run_dir=tmp_path_factory.mktemp("run"),
        timeout=180,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[launcher.ServerProcess]:
    """Our server with its page and an API key, small media limits so that tests can exceed them."""
    server = _start(tmp_path_factory, "--api-key", API_KEY)
    yield server
    launcher.stop_server(server)


@pytest.fixture
def page(browser):
    with new_tab(browser) as tab:
        yield tab


def shoot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def completed(server: launcher.ServerProcess) -> int:
    status, body = launcher.health(server.base_url)
    assert status == 200, body
    return body["queue"]["completed"]


def page_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def log_in(page, password: str = API_KEY) -> None:
    page.wait_for_selector("input[type=password]")
    page.fill("input[type=text]", "student")  # any user name
    page.fill("input[type=password]", password)
    page.keyboard.press("Enter")


def open_chat(page, url: str) -> None:
    page.goto(url)
    log_in(page)
    page.wait_for_selector("#question textarea")
    page.wait_for_function("document.querySelector('#status-line').innerText.includes('✅')")


def ask(page, text: str, files: list[Path] = ()) -> None:
    if files:
        page.set_input_files("#question input[type=file]", [str(f) for f in files])
        page.wait_for_function(
            "n => document.querySelectorAll('#question .thumbnail-item, #question img').length >= n",
            arg=len(files),
        )
    page.fill("#question textarea", text)
    page.press("#question textarea", "Enter")


def bot_texts(page) -> list[str]:
    return page.eval_on_selector_all("#chat [data-testid='bot']", "els => els.map(e => e.innerText.trim())")


def user_texts(page) -> list[str]:
    """The questions' texts (a question's pictures are messages of their own, without text)."""
    texts = page.eval_on_selector_all("#chat [data-testid='user']", "els => els.map(e => e.innerText.trim())")
    return [t for t in texts if t]


def set_max_tokens(page, value: int) -> None:
    """Type ``value`` into the max_tokens slider's box until the slider holds it.

    On a loaded 2-core machine a typed value was seen not to reach the slider (once in
    about five runs of the suite; cause not found), so it is typed again, with a
    screenshot of each miss in results/webui/.
    """
    slider = "v => document.querySelector('#max-tokens input[type=range]').value === String(v)"
    if not page.is_visible("#max-tokens"):
        page.click("#sampling button, #sampling .label-wrap")
    for attempt in range(3):
        page.fill("#max-tokens input[type=number]", str(value))
        page.press("#max-tokens input[type=number]", "Enter")
        page.press("#max-tokens input[type=number]", "Tab")  # Gradio takes the number on blur too
        try:  # the slider holds it: the next question is sent with this max_tokens
            page.wait_for_function(slider, arg=value, timeout=15_000)
            return
        except PlaywrightTimeout:
            shoot(page, f"max-tokens-not-taken-{attempt}")
    held = page.eval_on_selector("#max-tokens input[type=range]", "e => e.value")
    raise AssertionError(f"the max_tokens slider holds {held}, not {value}, after three tries")


def words(text: str) -> str:
    """The text's letters and digits (any script) in order: what markdown rendering leaves alone."""
    return re.sub(r"[\W_]", "", text)


def stop_is_active(page) -> bool:
    """Enabled and drawn as the red stop button (Gradio's ``stop`` variant)."""
    return page.eval_on_selector("#stop", "b => !b.disabled && b.classList.contains('stop')")


def wait_for_answers(page, count: int) -> list[str]:
    """Wait until ``count`` answers are complete (the status line refreshes after each one)."""
    page.wait_for_function(
        "n => document.querySelector('#status-line').innerText.includes('已完成 ' + n)", arg=count
    )
    return bot_texts(page)


# ----------------------------------------------------------------------- pages
def test_root_opens_the_page_with_its_status_line_and_demo_banner(server, page):
    open_chat(page, server.base_url + "/")
    assert page.url == server.base_url + "/ui/"
    status = page.inner_text("#status-line")
    assert "demo" in status and "cpu" in status and "队列" in status
    assert "演示模型" in page.inner_text("#demo-banner")
    names = page.eval_on_selector("#pick", "el => el.innerText")
    assert page.is_visible("#stop") and "temperature" in page.content()
    assert names  # the tutorial's pictures can be picked


def test_a_text_question_gets_a_streamed_answer(server, page):
    open_chat(page, server.base_url + "/ui/")
    before = completed(server)
    # Record every text the answer bubble shows while it grows.
    page.evaluate(
        """() => {
            window.seen = new Set();
            new MutationObserver(() => {
                const bots = document.querySelectorAll("#chat [data-testid='bot']");
                if (bots.length) window.seen.add(bots[bots.length - 1].innerText.trim());
            }).observe(document.querySelector('#chat'),
                       {subtree: true, childList: true, characterData: true});
        }"""
    )
    ask(page, "用一句话介绍你自己。")
    answers = wait_for_answers(page, before + 1)
    assert len(answers) == 1 and answers[0]
    seen = [t for t in page.evaluate("() => [...window.seen]") if t]
    assert len(seen) >= 2, f"the answer arrived in one piece: {seen}"  # streamed, not at once
    # Each state is the start of the final answer, compared on word characters: the random demo
    # text holds markdown markers that render differently while a piece is still incomplete.
    final = words(answers[0])
    assert all(final.startswith(words(t)) for t in seen), [t for t in seen if not final.startswith(words(t))]
    assert completed(server) == before + 1


def test_an_uploaded_picture_gets_an_answer_and_is_shown_in_the_users_turn(server, page):
    open_chat(page, server.base_url + "/ui/")
    before = completed(server)
    ask(page, "这张图里有什么？", [CAT_PHOTO_PATH])
    answers = wait_for_answers(page, before + 1)
    assert answers and answers[-1] and not answers[-1].startswith("⚠️")
    assert shown_pictures(page) == 1  # in the question's bubble, and loaded
    assert completed(server) == before + 1
    shoot(page, "picture-in-the-question")


def shown_pictures(page) -> int:
    """How many pictures the user's turns show, counting only those that loaded."""
    page.wait_for_function(
        "() => [...document.querySelectorAll(\"#chat [data-testid='user'] img\")].every(i => i.complete)"
    )
    return page.eval_on_selector_all(
        "#chat [data-testid='user'] img", "imgs => imgs.filter(i => i.naturalWidth > 0).length"
    )


def test_a_picked_tutorial_picture_and_a_second_turn_keep_the_history(server, page):
    open_chat(page, server.base_url + "/ui/")
    before = completed(server)
    page.click("#pick input")
    page.get_by_role("option", name="shapes_scene.png").click()
    ask(page, "图里有几个形状？")
    wait_for_answers(page, before + 1)
    assert shown_pictures(page) == 1  # the picked picture is shown with the question, like an upload
    ask(page, "再说一遍。")
    answers = wait_for_answers(page, before + 2)
    assert len(answers) == 2 and all(a and not a.startswith("⚠️") for a in answers)


def test_the_stop_button_is_active_only_while_answering_and_stops_the_server(server, page):
    open_chat(page, server.base_url + "/ui/")
    assert page.is_disabled("#stop") and not stop_is_active(page)  # nothing runs yet
    shoot(page, "idle")
    _, body = launcher.health(server.base_url)
    cancelled = body["queue"]["cancelled"]
    set_max_tokens(page, 2048)
    ask(page, "写一篇很长的文章。")
    page.wait_for_selector("#stop:enabled")
    assert stop_is_active(page)
    ask(page, "再写一篇。")  # sent while the first answer streams: queued, and stopped with it
    page.locator("#chat [data-testid='bot']", has_text="排队中").wait_for()
    page.wait_for_function(  # some of the first answer has arrived
        "() => document.querySelector(\"#chat [data-testid='bot']\").innerText.trim().length > 0"
    )
    shoot(page, "answering-with-a-queued-question")
    page.click("#stop")
    page.wait_for_selector("#stop:disabled")
    assert not stop_is_active(page)
    # The page settles on the stopped state (an update streamed just before the click may land after it).
    page.locator("#chat [data-testid='bot']", has_text="没有回答").wait_for(timeout=10_000)
    first, second = bot_texts(page)
    # What arrived is kept: the first answer shows its text (marked stopped, unless the random
    # demo model happened to finish it before the click).
    assert first.strip() and first != "（已停止）" and not first.startswith("⚠️"), first
    assert "没有回答" in second
    deadline = time.monotonic() + 60
    while launcher.health(server.base_url)[1]["queue"]["cancelled"] == cancelled:
        assert time.monotonic() < deadline, "the server kept generating after the stop button"
        time.sleep(0.1)
    body = launcher.health(server.base_url)[1]
    assert body["queue"]["running"] == 0
    shoot(page, "stopped")
    set_max_tokens(page, 24)
    ask(page, "你好")  # the next question is answered at once (nothing stays stuck behind the stop)
    answers = wait_for_answers(page, body["queue"]["completed"] + 1)
    assert len(answers) == 3 and not answers[-1].startswith(("⚠️", "排队中", "（已停止"))


def test_a_question_sent_while_an_answer_streams_is_queued_and_answered_next(server, page):
    open_chat(page, server.base_url + "/ui/")
    before = completed(server)
    set_max_tokens(page, 300)  # long enough to send the next question meanwhile
    ask(page, "第一个问题")
    page.wait_for_selector("#stop:enabled")
    set_max_tokens(page, 24)  # the settings in effect when a question is sent are its own
    ask(page, "第二个问题")
    page.locator("#chat [data-testid='bot']", has_text="排队中").wait_for()
    assert user_texts(page) == ["第一个问题", "第二个问题"]  # shown at once, nothing dropped
    answers = wait_for_answers(page, before + 2)
    assert len(answers) == 2
    assert all(a and not a.startswith("⚠️") and "排队中" not in a for a in answers)
    page.wait_for_selector("#stop:disabled")
    shoot(page, "queued-question-answered")


def test_a_question_sent_while_its_picture_uploads_waits_for_it(server, page):
    held = []
    open_chat(page, server.base_url + "/ui/")

    def hold(route) -> None:  # the upload stays in progress until the test releases it
        held.append(route)

    page.route("**/gradio_api/upload*", hold)
    before = completed(server)
    with page.expect_request("**/gradio_api/upload*"):
        page.set_input_files("#question input[type=file]", str(CAT_PHOTO_PATH))
    page.wait_for_selector("#question .loader")
    page.fill("#question textarea", "这是什么动物？")
    page.press("#question textarea", "Enter")
    waiting = page.locator("#upload-wait")
    waiting.wait_for()
    assert "上传" in waiting.inner_text()
    assert user_texts(page) == []  # not sent without its picture
    shoot(page, "waiting-for-the-upload")
    held[0].continue_()
    answers = wait_for_answers(page, before + 1)
    assert answers[-1] and not answers[-1].startswith("⚠️")
    assert user_texts(page) == ["这是什么动物？"] and shown_pictures(page) == 1
    waiting.wait_for(state="detached")


def test_the_status_line_refreshes_itself(server, page):
    open_chat(page, server.base_url + "/ui/")
    before = completed(server)
    assert f"已完成 {before}" in page.inner_text("#status-line")
    # Another client of the API gets an answer; this page is not touched.
    request = urllib.request.Request(
        server.base_url + "/v1/chat/completions",
        data=json.dumps({"messages": [{"role": "user", "content": "你好"}], "max_tokens": 4}).encode(),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200
    page.wait_for_function(
        "n => document.querySelector('#status-line').innerText.includes('已完成 ' + n)", arg=before + 1
    )


def geometry(page) -> dict[str, float]:
    return page.evaluate(
        """() => {
            const box = (s) => document.querySelector(s).getBoundingClientRect();
            return {chat: box('#chat').height, chat_top: box('#chat').top, stop_bottom: box('#stop').bottom,
                    page_height: document.documentElement.scrollHeight, window_height: innerHeight,
                    page_width: document.documentElement.scrollWidth, window_width: innerWidth};
        }"""
    )


def test_the_chat_fills_the_window_on_a_laptop_and_a_phone(server, browser):
    phone = {"is_mobile": True, "has_touch": True, "device_scale_factor": 2}
    sizes = {"laptop": (1280, 800, {}), "tall-window": (1280, 1100, {}), "phone": (390, 844, phone)}
    chat_heights = {}
    for name, (width, height, options) in sizes.items():
        with new_tab(browser, width, height, **options) as page:
            open_chat(page, server.base_url + "/ui/")
            if name != "tall-window":
                before = completed(server)
                ask(page, "这张图里有什么？", [CAT_PHOTO_PATH])
                wait_for_answers(page, before + 1)
            page.evaluate("() => window.scrollTo(0, 0)")
            size = geometry(page)
            assert size["page_width"] <= size["window_width"], f"{name}: the page is wider than the window"
            if name == "phone":  # the columns stack: chat, box and buttons together fill one screen
                assert size["chat"] >= 0.6 * size["window_height"], size
                assert size["stop_bottom"] - size["chat_top"] <= size["window_height"], size
            else:  # no empty page below the chat and nothing to scroll
                assert size["page_height"] <= size["window_height"] + 1, size
                assert size["stop_bottom"] >= size["window_height"] - 100, size
            chat_heights[name] = size["chat"]
            shoot(page, f"chat-{name}")
    assert chat_heights["tall-window"] - chat_heights["laptop"] >= 250  # it grows with the window


def test_a_too_large_upload_shows_a_readable_error(server, page, tmp_path):
    noise = Image.frombytes("RGB", (800, 800), os.urandom(800 * 800 * 3))
    big = tmp_path / "noise.png"
    noise.save(big)
    assert big.stat().st_size > MAX_MEDIA_BYTES
    open_chat(page, server.base_url + "/ui/")
    before = completed(server)
    page.set_input_files("#question input[type=file]", str(big))
    # Gradio refuses it in the browser (max_file_size = the server's max_media_bytes): nothing is stored.
    page.get_by_text("exceed the maximum allowed size", exact=False).first.wait_for()
    assert "noise.png" in page.inner_text("body")
    assert "Traceback" not in page.content()
    assert completed(server) == before


def test_a_picture_with_too_many_pixels_shows_the_servers_message(server, page, tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("RGB", (2100, 2100), "white").save(huge)  # 4.4 M pixels, a few KB
    open_chat(page, server.base_url + "/ui/")
    ask(page, "这是什么？", [huge])
    error = page.locator("#chat [data-testid='bot']", has_text="出错了")
    error.wait_for()
    text = error.inner_text()
    assert "HTTP 413" in text and "2100x2100" in text and "4,000,000 pixels" in text
    assert "Traceback" not in page.content()
    # The page keeps working after an error.
    before = completed(server)
    ask(page, "你好")
    assert not wait_for_answers(page, before + 1)[-1].startswith("⚠️")


def test_with_an_api_key_the_page_asks_for_it_and_never_shows_it(server, page):
    page.goto(server.base_url + "/")
    page.wait_for_selector("input[type=password]")
    assert page.locator("#question").count() == 0
    with page.expect_response(lambda r: r.url.endswith("/login")) as refused:
        log_in(page, "wrong key")
    assert refused.value.status == 400
    assert page.locator("#question").count() == 0
    log_in(page)  # a refused login clears both fields
    page.wait_for_selector("#question textarea")
    page.wait_for_function("document.querySelector('#status-line').innerText.includes('✅')")
    before = completed(server)
    ask(page, "你好")
    answers = wait_for_answers(page, before + 1)
    assert answers[-1] and not answers[-1].startswith("⚠️")  # the page sent the key from the server side
    config = page.request.get(server.base_url + "/ui/config").text()
    assert API_KEY not in config and API_KEY not in page.content()


def test_standalone_page_talks_to_a_remote_server(server, page, tmp_path):
    port = launcher.free_port()
    log = (tmp_path / "webui.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "helpers.webui", "--base-url", server.base_url + "/v1", "--port", str(port)],
        cwd=REPO_ROOT,
        env={**os.environ, "QWEN3VL_API_KEY": API_KEY, "QWEN3VL_DEFAULT_MAX_NEW_TOKENS": "24"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while not page_answers(url + "/ui/"):
            assert process.poll() is None, (tmp_path / "webui.log").read_text()
            assert time.monotonic() < deadline, "the standalone page did not start"
            time.sleep(0.2)
        open_chat(page, url + "/")
        assert server.base_url in page.inner_text("#status-line")
        before = completed(server)
        ask(page, "你好")
        answers = wait_for_answers(page, before + 1)
        assert answers[-1] and not answers[-1].startswith("⚠️")
    finally:
        page.close()  # its open event stream would hold the page's graceful shutdown
        process.terminate()
        process.wait(timeout=30)
        log.close()
