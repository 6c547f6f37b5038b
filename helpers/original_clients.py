"""The original tutorial's client scripts (``test_simple_api.py``, ``test_video_api.py``), pointable anywhere.

    python -m helpers.original_clients                    # $QWEN3VL_BASE_URL, else http://127.0.0.1:6006
    QWEN3VL_BASE_URL=http://127.0.0.1:8000 python -m helpers.original_clients --video moving_clip.mp4

The same checks as the original scripts (health, a text chat, an image chat, a
video chat) with the same request bodies, written with ``requests`` as they
were, with four changes so that they run against any OpenAI-compatible server
(ours, vLLM, an instructor's machine):

- the server is ``QWEN3VL_BASE_URL`` and the key ``QWEN3VL_API_KEY`` (helpers/client.py),
  not a hard-coded ``http://localhost:8000``;
- the answer is read from the top-level ``response`` field when the server
  sends one (ours does, for these scripts) and from ``choices[0].message.content``
  otherwise (the OpenAI field every server sends);
- the picture is sent inline as a ``data:`` URI instead of a URL on the
  internet, so the check works offline;
- the video goes as an OpenAI-style ``video_url`` part (a ``file://`` URL inside
  the server's allowed media folder), which both our server and vLLM accept;
  the original's Qwen-native ``{"type": "video"}`` part is ours only.

Each check returns True/False and prints ✅ / ❌ as the originals did; no
``time.sleep`` between them (the originals slept to "wait for the server").
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

from helpers.assets import CAT_PHOTO_PATH, IMAGES_DIR
from helpers.chat_ui import data_uri
from helpers.client import auth_headers, base_url, http_session
from helpers.config import DEMO_MODEL
from helpers.display import banner

TIMEOUT = 300


def answer_text(result: Mapping[str, Any]) -> str:
    """The answer of a chat-completions response: ``response`` (ours) or ``choices[0].message.content``."""
    if isinstance(result.get("response"), str):
        return result["response"]
    return result["choices"][0]["message"]["content"]


def _chat(
    name: str,
    url: str,
    content: str | list[dict[str, Any]],
    key: str | None,
    max_tokens: int,
    model: str | None,
) -> bool:
    """One user message with the original scripts' payload (temperature 0.7), posted and reported."""
    payload: dict[str, Any] = {
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
    }
    if model:
        payload["model"] = model
    headers = {"Content-Type": "application/json", **auth_headers(key)}
    with http_session(url) as http:  # the original used requests.post; this one ignores a proxy on loopback
        response = http.post(f"{url}/v1/chat/completions", json=payload, headers=headers, timeout=TIMEOUT)
    return _report(name, response, demo=model == DEMO_MODEL)


def _report(name: str, response: requests.Response, demo: bool = False) -> bool:
    if response.status_code == 200:
        result = response.json()
        print(f"✅ {name}测试成功")
        print(banner(demo))  # the answer below is model output (noise from the demo model)
        print(f"回复: {answer_text(result)}")
        print(f"Token使用: {result['usage']}")
        return True
    print(f"❌ {name}测试失败: {response.status_code}")
    print(f"错误信息: {response.text}")
    return False


def test_health_check(url: str) -> bool:
    """``GET /health``: 200 means ready. Ours reports model/device; vLLM answers with an empty body."""
    print("=== 测试健康检查接口 ===")
    try:
        with http_session(url) as http:
            response = http.get(f"{url}/health", timeout=30)
    except requests.RequestException as exc:
        print(f"❌ 健康检查异常: {exc}")
        return False
    if response.status_code != 200:
        print(f"❌ 健康检查失败: {response.status_code}")
        return False
    body = response.json() if response.content else {}
    print("✅ 健康检查通过")
    print(f"模型: {body.get('model', '—')}")
    print(f"设备: {body.get('device', '—')}")
    print(f"GPU内存: {body.get('gpu_memory', '—')}")
    return True


def test_text_chat(url: str, key: str | None = None, max_tokens: int = 256, model: str | None = None) -> bool:
    print("\n=== 测试纯文本对话 ===")
    return _chat("文本对话", url, "你好，请介绍一下你自己。", key, max_tokens, model)


def test_image_chat(
    url: str,
    key: str | None = None,
    max_tokens: int = 512,
    model: str | None = None,
    image: Path = CAT_PHOTO_PATH,
) -> bool:
    print("\n=== 测试图像对话 ===")
    content = [
        {"type": "image_url", "image_url": {"url": data_uri(image.read_bytes(), image.name)}},
        {"type": "text", "text": "请描述这张图片的内容。"},
    ]
    return _chat("图像对话", url, content, key, max_tokens, model)


def test_video_conversation(
    url: str, video: Path, key: str | None = None, max_tokens: int = 512, model: str | None = None
) -> bool:
    """``video`` must lie inside the server's ``--allowed-local-media-path`` (it reads the file itself)."""
    print("\n=== 视频对话测试 ===")
    content = [
        {"type": "video_url", "video_url": {"url": Path(video).resolve().as_uri()}},
        {"type": "text", "text": "请描述这个视频的内容，包括主要场景和动作。"},
    ]
    print(f"视频文件: {video}")
    return _chat("视频对话", url, content, key, max_tokens, model)


def served_model_name(url: str, key: str | None = None) -> str | None:
    """The model the server names in ``/v1/models`` (vLLM refuses a request for another name)."""
    with http_session(url) as http:
        response = http.get(f"{url}/v1/models", headers=auth_headers(key), timeout=30)
    return response.json()["data"][0]["id"] if response.status_code == 200 else None


def run_all(
    url: str | None = None, key: str | None = None, video: Path | None = None, max_tokens: int = 256
) -> dict[str, bool]:
    """Every check against the server at ``url`` ($QWEN3VL_BASE_URL by default); name -> passed."""
    url = base_url(url)
    print(f"开始测试 Qwen3-VL API 服务: {url}")
    print("=" * 50)
    results = {"健康检查": test_health_check(url)}
    model = served_model_name(url, key)
    results["文本对话"] = test_text_chat(url, key, max_tokens, model)
    results["图像对话"] = test_image_chat(url, key, max_tokens, model)
    if video is not None:
        results["视频对话"] = test_video_conversation(url, video, key, max_tokens, model)
    print("\n" + "=" * 50)
    print("测试结果总结:")
    for name, passed in results.items():
        print(f"{name}: {'✅ 通过' if passed else '❌ 失败'}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.original_clients", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--base-url", default=None, help="server root (default: $QWEN3VL_BASE_URL)")
    parser.add_argument(
        "--video",
        default=None,
        help=f"also ask about this video; a bare name is looked up in {IMAGES_DIR} "
        "(the server must allow that folder: --allowed-local-media-path)",
    )
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args(argv)
    video = None
    if args.video:
        video = Path(args.video)
        if not video.is_absolute() and not video.exists():
            video = IMAGES_DIR / video
    results = run_all(args.base_url, None, video, args.max_tokens)
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
