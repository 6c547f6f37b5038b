"""The web page with a Thinking model: the reasoning folded above the answer, in a real headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from chromium import new_tab
from test_webui import ask, bot_texts

from helpers import launcher

TITLE = "推理过程"


@pytest.fixture(scope="module")
def thinking_server(tmp_path_factory) -> Iterator[launcher.ServerProcess]:
    server = launcher.start_server(
        model="demo-thinking",
        port=launcher.free_port(),
        extra_args=["--ui", "--default-max-new-tokens", "32", "--max-new-tokens-limit", "32"],
        run_dir=tmp_path_factory.mktemp("run"),
        timeout=180,
    )
    yield server
    launcher.stop_server(server)


@pytest.fixture(scope="module")
def page(browser):
    with new_tab(browser, 1280, 900) as tab:
        yield tab


def test_the_reasoning_is_folded_above_the_answer(thinking_server, page):
    page.goto(thinking_server.base_url + "/ui/")
    page.wait_for_selector("#question textarea")
    page.wait_for_function("document.querySelector('#status-line').innerText.includes('✅')")
    ask(page, "你好")
    page.wait_for_function("document.querySelector('#status-line').innerText.includes('已完成 1')")
    texts = bot_texts(page)
    assert len(texts) == 2 and TITLE in texts[0] and TITLE not in texts[1]  # reasoning first, then answer
    # Folded once the answer is complete: only the title shows, until the learner opens it.
    folded = texts[0]
    page.get_by_text(TITLE).first.click()
    page.wait_for_function(
        "n => document.querySelectorAll(\"#chat [data-testid='bot']\")[0].innerText.trim().length > n",
        arg=len(folded),
    )
