"""The original tutorial's client scripts label the model's answers (demo answers are noise)."""

from __future__ import annotations

import requests

from helpers import original_clients
from helpers.display import DEMO_BANNER, REAL_BANNER


class Reply(requests.Response):
    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.status_code, self._content = 200, body


def test_a_demo_answer_is_printed_under_the_demo_banner(capsys):
    body = b'{"choices": [{"message": {"content": "noise"}}], "usage": {"total_tokens": 3}}'
    assert original_clients._report("文本对话", Reply(body), demo=True)
    out = capsys.readouterr().out
    assert out.index(DEMO_BANNER) < out.index("回复: noise")
    assert original_clients._report("文本对话", Reply(body), demo=False)
    assert REAL_BANNER in capsys.readouterr().out
