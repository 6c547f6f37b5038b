"""A web chat page (Gradio) for any OpenAI-compatible server: text, pictures, videos, streamed answers.

    python -m helpers.server --model demo       # our server mounts it: http://127.0.0.1:6006/ui
    python -m helpers.webui --base-url http://127.0.0.1:8000 --port 7860   # standalone, e.g. for vLLM

The page never loads a model and never imports the engine: it is a client of
``/v1/chat/completions`` and ``/health`` over HTTP, exactly like the notebooks'
clients, so it works unchanged against our server, vLLM or an instructor's
machine (``QWEN3VL_BASE_URL`` / ``QWEN3VL_API_KEY`` or ``--base-url`` /
``--api-key``).

How uploads stay bounded:

- Gradio stores an upload in this process's own temporary folder and refuses
  files larger than ``max_media_bytes`` (it deletes its copies after an hour);
  on sending, the file is copied into a folder that belongs to the browser
  session, deleted with the session (by "清空对话", or when Gradio expires a
  closed tab's state, an hour after it closed); the whole temporary folder is
  deleted when the process stops.
- Pictures and videos travel to the server inside the request as ``data:``
  URIs. The server therefore needs no file access at all (no
  ``--allowed-local-media-path`` that other API clients could use to read
  somebody's uploads), and a remote server or vLLM accepts them the same way.
  The server then applies its usual limits (bytes, pixels, duration, counts)
  and its error message is shown on the page.
- Only files inside the upload folder or the tutorial's ``images/`` (picked by
  name from a fixed list) are ever read: nothing typed in the browser is used
  as a path.

How the page behaves while it works (tests/test_webui.py checks each in Chromium):

- The chat fills the window (``fill_height``; stacked columns on a phone get a CSS height).
- The stop button is enabled only while an answer is generated for the tab.
- The status line refreshes on load, when an answer starts and ends, and every ``STATUS_EVERY_S``.
- Nothing sent early is dropped: Gradio waits for an upload before it sends the
  question (``PAGE_JS`` says so under the box meanwhile), and a question sent
  while an answer streams is queued in the tab's :class:`ChatSession`, shown as
  such, and answered next. :meth:`Turn.display` builds each turn's messages
  from its state and the streamed deltas (:meth:`Turn.add`).

When an API key is set, the page asks for it (Gradio's login: any non-empty
user name, the key as password); the key itself stays on the server side.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import importlib.util
import json
import logging
import mimetypes
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helpers import client as endpoints
from helpers.chat_ui import IMAGE_SUFFIXES, data_uri
from helpers.display import DEMO_BANNER
from helpers.grounding import draw_grounding, grounding_prompt, parse_grounding

if TYPE_CHECKING:
    import gradio as gr
    from fastapi import FastAPI
    from PIL import Image

    from helpers.config import Settings

UI_PATH = "/ui"
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")
NO_PICK = "（不选）"

logger = logging.getLogger("qwen3vl.webui")


class UiError(Exception):
    """Something to show the user as a readable message instead of an answer."""


# ----------------------------------------------------------------- where to send
def own_url(host: str, port: int) -> str:
    """How a process reaches the server it runs in: the loopback address for 0.0.0.0 / ::."""
    if host in ("0.0.0.0", "", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


# --------------------------------------------------------------------- the API
def error_message(status: int, body: bytes | str) -> str:
    """A readable sentence from an error response: OpenAI ``{"error": {"message"}}``, FastAPI, vLLM."""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    message = None
    with contextlib.suppress(ValueError):
        data = json.loads(text)
        if isinstance(data, dict):
            error = data.get("error")
            if isinstance(error, dict):
                message = error.get("message")
            elif isinstance(error, str):
                message = error
            message = message or data.get("message") or data.get("detail")
    if not message:
        message = text.strip()[:300] or "no details"
    if not isinstance(message, str):
        message = json.dumps(message, ensure_ascii=False)[:300]
    return f"服务器返回 HTTP {status}：{message}" if status else message


class ApiClient:
    """The few calls the page makes: ``/health``, ``/v1/models`` and streamed chat completions."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 300.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self._model: str | None = None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _client(self):
        import httpx

        # read=timeout: the longest pause between two streamed pieces (a long prompt on a busy server).
        return httpx.AsyncClient(
            base_url=self.base_url,
            headers=self._headers(),
            timeout=httpx.Timeout(self.timeout, connect=5.0),
            trust_env=False,  # never route our own server through a proxy from the environment
        )

    async def health(self) -> tuple[int, dict[str, Any]]:
        """(status, body) of ``GET /health``; (0, {"error": ...}) when nothing answers.

        vLLM's ``/health`` answers 200 with an empty body: the page then shows what it can.
        """
        import httpx

        try:
            async with self._client() as client:
                response = await client.get("/health", timeout=5.0)
        except httpx.HTTPError as exc:
            return 0, {"error": f"{type(exc).__name__}: {exc}"}
        try:
            body = response.json()
        except ValueError:
            body = {}
        return response.status_code, body if isinstance(body, dict) else {}

    async def model(self) -> str:
        """The served model's id (from ``/v1/models``; vLLM wants it in every request)."""
        if self._model is None:
            async with self._client() as client:
                response = await client.get("/v1/models")
            if response.status_code != 200:
                raise UiError(error_message(response.status_code, response.content))
            data = response.json().get("data") or []
            if not data:
                raise UiError("the server lists no model under /v1/models")
            self._model = str(data[0]["id"])
        return self._model

    async def stream_chat(
        self, messages: list[dict[str, Any]], **params: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """The answer's deltas (``choices[0].delta``) as the server sends them; :class:`UiError` on failure.

        A Thinking model's deltas carry ``reasoning_content`` (our server) or ``reasoning``
        (vLLM 0.32) before the answer's ``content``. Leaving the loop early (the stop
        button) closes the connection, and the server stops generating.
        """
        import httpx

        try:
            model = await self.model()
            body = {"model": model, "messages": messages, "stream": True, **params}
            async with (
                self._client() as client,
                client.stream("POST", "/v1/chat/completions", json=body) as r,
            ):
                if r.status_code != 200:
                    raise UiError(error_message(r.status_code, await r.aread()))
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[len("data:") :].strip()
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    if "error" in chunk:  # an error after the stream began (OpenAI style)
                        raise UiError(error_message(0, data))
                    for choice in chunk.get("choices") or []:
                        if choice.get("delta"):
                            yield choice["delta"]
        except httpx.HTTPError as exc:
            raise UiError(f"无法连接服务器 {self.base_url}（{type(exc).__name__}: {exc}）") from None


def status_line(status: int, body: dict[str, Any], base_url: str) -> str:
    """The line under the title: model, device and queue from ``/health``, or what is wrong."""
    if status == 0:
        return f"❌ 连不上服务器 `{base_url}`：{body.get('error', '')}"
    state = body.get("status", "ok" if status == 200 else f"HTTP {status}")
    if state == "loading":
        return f"⏳ 模型 `{body.get('model', '?')}` 正在加载，稍候再发送（服务器：`{base_url}`）"
    if state == "error" or status >= 400:
        return f"❌ 服务器不可用（{state}）：{body.get('error', '')}"
    parts = [f"✅ 模型 `{body.get('model', '?')}`"]
    if body.get("device"):
        parts.append(f"设备 `{body['device']}`" + (f"（{body['dtype']}）" if body.get("dtype") else ""))
    queue = body.get("queue")
    if isinstance(queue, dict):
        parts.append(
            f"队列：运行 {queue.get('running', 0)}，等待 {queue.get('waiting', 0)}，"
            f"已完成 {queue.get('completed', 0)}"
        )
    parts.append(f"服务器 `{base_url}`")
    return " · ".join(parts)


# ---------------------------------------------------------------------- media
@dataclass(frozen=True)
class Limits:
    """What the page checks before sending (the server checks everything again)."""

    max_media_bytes: int = 20 * 1024 * 1024
    max_images: int = 4
    max_videos: int = 1

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.max_media_bytes, settings.max_images_per_request, settings.max_videos_per_request)


def media_kind(path: Path) -> str:
    """``image`` or ``video`` from the file name; :class:`UiError` for anything else."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    kinds = f"图片 {' '.join(IMAGE_SUFFIXES)}；视频 {' '.join(VIDEO_SUFFIXES)}"
    raise UiError(f"不支持的文件类型：{path.name}（可用：{kinds}）")


def check_media(paths: Sequence[Path], limits: Limits) -> None:
    """Refuse files the API would refuse anyway, before encoding them: bytes and counts."""
    kinds = [media_kind(p) for p in paths]
    for path in paths:
        size = path.stat().st_size
        if size > limits.max_media_bytes:
            raise UiError(
                f"{path.name} 太大（{size / 2**20:.1f} MiB）：上限是 "
                f"{limits.max_media_bytes / 2**20:.1f} MiB (media is larger than the limit)"
            )
    if kinds.count("image") > limits.max_images:
        raise UiError(f"一次最多 {limits.max_images} 张图片")
    if kinds.count("video") > limits.max_videos:
        raise UiError(f"一次最多 {limits.max_videos} 个视频")


def media_part(path: Path) -> dict[str, Any]:
    """An OpenAI content part carrying the file inline as a ``data:`` URI."""
    data = path.read_bytes()
    if media_kind(path) == "image":
        try:
            return {"type": "image_url", "image_url": {"url": data_uri(data, path.name)}}
        except ValueError as exc:
            raise UiError(str(exc)) from None
    import base64

    mime = mimetypes.guess_type(path.name)[0] or "video/mp4"
    url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return {"type": "video_url", "video_url": {"url": url}}


def inside(path: Path, folder: Path) -> bool:
    """True when ``path`` (symlinks followed) lies in ``folder``."""
    try:
        path.resolve().relative_to(folder.resolve())
    except (ValueError, OSError):
        return False
    return True


def grounding_overlay(answer: str, image_path: Path | None) -> Image.Image | None:
    """The picture with the answer's boxes and points drawn, or None when there is nothing to draw."""
    if image_path is None or media_kind(image_path) != "image":
        return None
    detections = parse_grounding(answer)
    if not detections:
        return None
    from PIL import Image

    with Image.open(image_path) as image:
        return draw_grounding(image.convert("RGB"), detections)


# -------------------------------------------------------------------- session
# What a turn is doing; the page shows each state (nothing is dropped without a word).
QUEUED = "queued"  # sent while another answer streamed: answered next, in order
ANSWERING = "answering"  # its answer is streaming now
DONE = "done"  # answered
STOPPED = "stopped"  # the stop button (or 清空对话) ended it; what arrived is kept
FAILED = "failed"  # the server refused or could not be reached; ``note`` says why
REFUSED = "refused"  # never sent: the page found something wrong first; ``note`` says what

QUEUED_NOTE = "排队中：上一条回答结束后自动发送（点「停止」取消）"


@dataclass
class Turn:
    """One question and its answer as it streams: the one place a turn's display is built from."""

    text: str
    files: list[Path]
    params: dict[str, Any] = field(default_factory=dict)  # sampling as set when it was sent
    state: str = QUEUED
    answer: str = ""
    reasoning: str = ""  # a Thinking model's reasoning, shown folded above the answer
    note: str = ""  # why there is no (complete) answer

    def add(self, delta: dict[str, Any]) -> None:
        """Take one streamed delta (an OpenAI ``choices[].delta``) into the turn."""
        # reasoning_content (our server, DashScope) or reasoning (vLLM 0.32)
        self.reasoning += delta.get("reasoning_content") or delta.get("reasoning") or ""
        self.answer += delta.get("content") or ""

    def in_history(self) -> bool:
        """Whether the model sees this turn in later requests (answered, or stopped after some text)."""
        return self.state == DONE or (self.state == STOPPED and bool(self.answer))

    def question_message(self) -> dict[str, Any]:
        content: list[Any] = [{"path": str(p)} for p in self.files]
        return {"role": "user", "content": [*content, self.text] if content else self.text or "（空）"}

    def answer_message(self) -> dict[str, Any] | None:
        """What the assistant's bubble shows in this state; None: no bubble yet."""
        if self.state == QUEUED:
            text = QUEUED_NOTE
        elif self.state == ANSWERING:
            text = self.answer
        elif self.state == DONE:
            text = self.answer or "（空回答）"
        elif self.state == STOPPED:
            text = f"{self.answer}\n\n（已停止）" if self.answer else "（已停止，这个问题没有回答）"
        else:  # FAILED, REFUSED
            text = f"⚠️ 出错了：{self.note}"
        return {"role": "assistant", "content": text}

    def display(self) -> list[dict[str, Any]]:
        """The chat messages that show this turn: the question with its files, then the answer so far."""
        answer = self.answer_message()
        thought = []
        if self.reasoning:  # open while it streams, folded once the answer starts
            thought = [reasoning_bubble(self.reasoning, done=self.state != ANSWERING or bool(self.answer))]
        return [self.question_message(), *thought] + ([answer] if answer else [])


@dataclass
class ChatSession:
    """One browser tab's conversation: its turns, in order, and its own folder for uploads."""

    folder: Path
    turns: list[Turn] = field(default_factory=list)
    busy: bool = False  # an answer loop runs for this tab (see ``answer`` in build_page)
    run: int = 0  # which loop may run: stop() moves it on, and an older loop ends at its next step

    def last_image(self) -> Path | None:
        for turn in reversed(self.turns):
            if not turn.in_history():
                continue
            for path in reversed(turn.files):
                if media_kind(path) == "image":
                    return path
        return None

    def next_queued(self) -> Turn | None:
        return next((t for t in self.turns if t.state == QUEUED), None)

    def stop(self) -> None:
        """End the answer in progress (keeping what arrived) and every queued question.

        The next question starts a new loop at once, even before the old one noticed.
        """
        for turn in self.turns:
            if turn.state in (QUEUED, ANSWERING):
                turn.state = STOPPED
        self.run += 1
        self.busy = False

    def display(self) -> list[dict[str, Any]]:
        """The chat's messages: every turn's, in order."""
        out: list[dict[str, Any]] = []
        for turn in self.turns:
            if turn.state == QUEUED and not self.busy:  # about to be answered, not waiting behind one
                out.append(turn.question_message())
            else:
                out.extend(turn.display())
        return out

    def messages(self, question: Turn) -> list[dict[str, Any]]:
        """The conversation so far in OpenAI format (files as data: URIs), ending with ``question``."""
        out: list[dict[str, Any]] = []
        for turn in self.turns:
            if turn is not question and not turn.in_history():
                continue
            if turn.files:
                parts = [media_part(p) for p in turn.files] + [{"type": "text", "text": turn.text}]
                out.append({"role": "user", "content": parts})
            else:
                out.append({"role": "user", "content": turn.text})
            if turn is question:
                break
            out.append({"role": "assistant", "content": turn.answer})
        return out

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


# ----------------------------------------------------------------------- page
@dataclass
class PageConfig:
    """Everything the page needs to know; built by :func:`mount_ui` or the standalone command."""

    base_url: str
    api_key: str | None
    limits: Limits
    upload_root: Path
    images_dir: Path | None
    max_tokens_limit: int = 2048
    default_max_tokens: int = 512
    default_temperature: float = 0.7
    default_top_p: float = 0.8
    default_presence_penalty: float = 1.5
    concurrency: int = 8

    def asset_choices(self) -> dict[str, Path]:
        if self.images_dir is None or not self.images_dir.is_dir():
            return {}
        return {
            p.name: p
            for p in sorted(self.images_dir.iterdir())
            if p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES
        }


STATUS_EVERY_S = 5.0  # the status line also refreshes on its own while the tab is open

# The page's own look: the chat takes the window's height (fill_height does the rest).
PAGE_CSS = """
#upload-wait { color: var(--body-text-color); background: var(--color-accent-soft);
               border-radius: var(--radius-md); padding: 6px 10px; font-size: var(--text-md); }
#stop { transition: none; }
#stop:disabled { cursor: not-allowed; }
@media (max-width: 720px) {  /* a phone: the columns stack, so the window's height is set here */
  #chat { height: max(300px, calc(100dvh - 230px)) !important; }
}
"""

# Runs once in the browser. Gradio itself waits for an upload to finish before it sends a
# question; this only says so, next to the box, while it waits.
PAGE_JS = """
() => {
  const note = "图片/视频还在上传，上传完成后自动发送这个问题 … (waiting for the upload)";
  const uploading = () => document.querySelector("#question .loader") !== null;
  function show() {
    const box = document.querySelector("#question");
    if (!box || !uploading()) return;
    let el = document.querySelector("#upload-wait");
    if (!el) {
      el = document.createElement("div");
      el.id = "upload-wait";
      el.setAttribute("role", "status");
      box.insertAdjacentElement("afterend", el);
    }
    el.textContent = note;
    const done = new MutationObserver(() => {
      if (!uploading()) { el.remove(); done.disconnect(); }
    });
    done.observe(box, {subtree: true, childList: true});
  }
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && e.target.closest && e.target.closest("#question")) show();
  }, true);
  document.addEventListener("click", (e) => {
    if (e.target.closest && e.target.closest("#question [data-testid='submit-button']")) show();
  }, true);
}
"""


def build_page(config: PageConfig) -> gr.Blocks:
    """The Gradio page: chat, upload or pick media, sliders, stop button, status, grounding picture.

    A question sent while an answer streams is queued (shown as such) and
    answered next; the stop button ends the answer and every queued question.
    """
    import gradio as gr

    client = ApiClient(config.base_url, config.api_key)
    assets = config.asset_choices()
    sessions_dir = config.upload_root / "sessions"
    sessions_dir.mkdir(parents=True, exist_ok=True)

    def new_session() -> ChatSession:
        folder = sessions_dir / uuid.uuid4().hex
        folder.mkdir(parents=True)
        return ChatSession(folder)

    def stop_button(active: bool) -> Any:
        """The stop button: red and clickable only while an answer is generated for this tab."""
        return gr.update(interactive=active, variant="stop" if active else "secondary")

    async def refresh_status() -> tuple[str, Any]:
        status, body = await client.health()
        demo = bool(body.get("demo"))
        return status_line(status, body, config.base_url), gr.update(visible=demo)

    async def add_question(
        message: dict | None,
        picked: str,
        session: ChatSession | None,
        temperature: float,
        top_p: float,
        max_tokens: float,
        presence_penalty: float,
    ):
        """Check the question and its files, keep copies in the session folder, show it (queued)."""
        session = session or new_session()
        params = {
            "temperature": float(temperature),
            "top_p": float(top_p),
            "max_tokens": int(max_tokens),
            "presence_penalty": float(presence_penalty),
        }
        text = ((message or {}).get("text") or "").strip()
        uploads = [Path(f if isinstance(f, str) else f["path"]) for f in (message or {}).get("files") or []]
        try:
            if not text:
                raise UiError("请先输入问题。")
            for path in uploads:  # Gradio hands us paths in its upload folder; refuse anything else
                if not inside(path, config.upload_root) or not path.is_file():
                    raise UiError(f"{path.name} 不是本页上传的文件")
            files = list(uploads)
            if picked and picked != NO_PICK:
                if picked not in assets:
                    raise UiError(f"没有示例文件 {picked}")
                files.append(assets[picked])
            check_media(files, config.limits)
        except UiError as exc:  # not sent: say why, and leave the question in the box to fix it
            session.turns.append(Turn(text, [], state=REFUSED, note=str(exc)))
            return gr.update(), session.display(), session, gr.update()
        kept = []
        for path in files:
            copy = session.folder / f"{uuid.uuid4().hex[:8]}{path.suffix.lower()}"
            shutil.copyfile(path, copy)
            kept.append(copy)
        session.turns.append(Turn(text, kept, params))
        return gr.update(value=None), session.display(), session, gr.update(value=NO_PICK)

    async def answer(session: ChatSession | None):
        """Answer this tab's queued questions in order, streaming each into the chat.

        One loop per tab: a question sent while it runs is picked up here, and
        that question's own call returns at once.
        """
        if session is None or session.busy or session.next_queued() is None:
            return
        session.busy = True
        run = session.run
        keep = gr.update()

        def shown(overlay: Any = keep, stop: Any = keep, status: tuple[Any, Any] = (keep, keep)):
            return session.display(), overlay, stop, *status

        try:
            while session.run == run and (turn := session.next_queued()) is not None:
                turn.state = ANSWERING
                yield shown(stop=stop_button(True))
                try:
                    messages = await asyncio.to_thread(session.messages, turn)
                    async with contextlib.aclosing(client.stream_chat(messages, **turn.params)) as deltas:
                        async for delta in deltas:
                            if turn.state != ANSWERING:  # stopped meanwhile: closing the stream ends it
                                break
                            started = not turn.answer
                            turn.add(delta)
                            # Once the server has it, the status line shows it running.
                            yield shown(status=await refresh_status()) if started else shown()
                except UiError as exc:
                    if turn.state == ANSWERING:
                        turn.state, turn.note = FAILED, str(exc)
                        yield shown()
                    continue
                if turn.state == ANSWERING:
                    turn.state = DONE
                    drawn = grounding_overlay(turn.answer, session.last_image())
                    yield shown(overlay=gr.update(value=drawn, visible=drawn is not None))
        except BaseException:  # cancelled: the stop button, 清空对话 or a closed tab
            if session.run == run:
                session.stop()
            raise
        finally:
            if session.run == run:
                session.busy = False

    async def after_answer(session: ChatSession | None):
        """The stop button and the status line once an answer (or its call) ended."""
        line, banner = await refresh_status()
        return stop_button(bool(session and session.busy)), line, banner

    def stop_answers(session: ChatSession | None):
        if session is None:
            return [], stop_button(False)
        session.stop()
        return session.display(), stop_button(False)

    async def after_stop(session: ChatSession | None):
        """The chat again after 停止 or 清空对话: the cancelled loop's last update may still be coming.

        The stop click answers at once (outside the queue), so an update the loop yielded
        just before could arrive after it and show the old state; this queued step comes last.
        """
        chat = session.display() if session is not None else []
        return chat, *await after_answer(session)

    def clear(session: ChatSession | None):
        if session is not None:
            session.close()
        return [], new_session(), gr.update(value=None, visible=False), stop_button(False)

    def ask_grounding(message: dict | None):
        files = (message or {}).get("files") or []
        return {"text": grounding_prompt("所有物体", language="zh"), "files": files}

    with gr.Blocks(title="Qwen3-VL 网页聊天", fill_height=True, delete_cache=(600, 3600)) as page:
        gr.Markdown("## Qwen3-VL 网页聊天", elem_id="title")
        status = gr.Markdown("⏳ 正在读取服务器状态 …", elem_id="status-line")
        banner = gr.Markdown(f"**{DEMO_BANNER}**", visible=False, elem_id="demo-banner")
        session = gr.State(None, delete_callback=lambda s: s and s.close(), time_to_live=24 * 3600)
        timer = gr.Timer(STATUS_EVERY_S)
        with gr.Row(scale=1, equal_height=False):
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(
                    label="对话",
                    scale=1,  # with fill_height: as tall as the window allows
                    min_height=320,
                    elem_id="chat",
                    feedback_options=None,
                    placeholder="在下面输入问题，可以附上图片或视频。",
                )
                question = gr.MultimodalTextbox(
                    placeholder="输入问题，可附上图片或视频，回车发送",
                    file_types=["image", "video"],
                    file_count="multiple",
                    sources=["upload"],
                    show_label=False,
                    elem_id="question",
                )
                with gr.Row():
                    small = {"size": "md", "min_width": 60}
                    stop = gr.Button("停止", variant="secondary", interactive=False, elem_id="stop", **small)
                    reset = gr.Button("清空对话", elem_id="clear", **small)
                    grounding = gr.Button("定位提示", elem_id="grounding-prompt", **small)
                    refresh = gr.Button("刷新状态", elem_id="refresh", **small)
            with gr.Column(scale=1, min_width=260):
                picked = gr.Dropdown(
                    [NO_PICK, *assets], value=NO_PICK, label="或选一个示例文件（images/）", elem_id="pick"
                )
                overlay = gr.Image(label="定位结果", visible=False, interactive=False, elem_id="overlay")
                with gr.Accordion("采样参数", open=False, elem_id="sampling"):
                    temperature = gr.Slider(0, 2, config.default_temperature, step=0.05, label="temperature")
                    top_p = gr.Slider(0.05, 1, config.default_top_p, step=0.05, label="top_p")
                    max_tokens = gr.Slider(
                        1,
                        config.max_tokens_limit,
                        config.default_max_tokens,
                        step=1,
                        label="max_tokens",
                        elem_id="max-tokens",
                    )
                    presence = gr.Slider(
                        -2, 2, config.default_presence_penalty, step=0.1, label="presence_penalty"
                    )

        quiet = {"queue": False, "show_progress": "hidden"}
        page.load(refresh_status, None, [status, banner], **quiet)
        timer.tick(refresh_status, None, [status, banner], **quiet)
        refresh.click(refresh_status, None, [status, banner], queue=False)
        asked = question.submit(
            add_question,
            [question, picked, session, temperature, top_p, max_tokens, presence],
            [question, chatbot, session, picked],
            queue=False,
            show_progress="hidden",  # while Gradio waits for an upload, PAGE_JS says so instead
        )
        answering = asked.then(
            answer,
            session,
            [chatbot, overlay, stop, status, banner],
            concurrency_limit=config.concurrency,
            show_progress="hidden",
        )
        answering.then(after_answer, session, [stop, status, banner], **quiet)
        stopping = stop.click(stop_answers, session, [chatbot, stop], cancels=[answering], queue=False)
        stopping.then(after_stop, session, [chatbot, stop, status, banner], show_progress="hidden")
        clearing = reset.click(
            clear, session, [chatbot, session, overlay, stop], cancels=[answering], queue=False
        )
        clearing.then(after_stop, session, [chatbot, stop, status, banner], show_progress="hidden")
        grounding.click(ask_grounding, question, question, queue=False)
    return page


def reasoning_bubble(text: str, done: bool = False) -> dict[str, Any]:
    """A Thinking model's reasoning as a foldable message (shown open while it streams, folded when done)."""
    metadata = {"title": "💭 推理过程（reasoning_content）", "status": "done" if done else "pending"}
    return {"role": "assistant", "content": text, "metadata": metadata}


# ---------------------------------------------------------------------- mount
def mount_ui(
    app: FastAPI,
    settings: Settings,
    base_url: str | None = None,
    api_key: str | None = None,
    path: str = UI_PATH,
) -> bool:
    """Mount the page at ``path`` on ``app``; it talks to ``base_url`` (default: this server itself).

    The page requires ``api_key`` (default ``settings.api_key``) as its login
    password when one is set, and sends it to the API from the server side.
    Returns False (and logs why) when Gradio is not installed: the API still works.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls from a classroom
    if importlib.util.find_spec("gradio") is None:
        logger.warning("gradio is not installed: no web page at %s (pip install -r requirements.txt)", path)
        return False
    upload_root = Path(tempfile.mkdtemp(prefix="qwen3vl-webui-"))
    atexit.register(shutil.rmtree, upload_root, True)  # also when the app never started
    os.environ["GRADIO_TEMP_DIR"] = str(upload_root)  # before importing Gradio: it keeps uploads there
    import gradio as gr

    from helpers.assets import IMAGES_DIR

    key = settings.api_key if api_key is None else api_key
    config = PageConfig(
        base_url=(base_url or own_url(settings.host, settings.port)).rstrip("/"),
        api_key=key,
        limits=Limits.from_settings(settings),
        upload_root=upload_root,
        images_dir=IMAGES_DIR,
        max_tokens_limit=settings.max_new_tokens_limit,
        default_max_tokens=settings.default_max_new_tokens,
        # The model's published settings (helpers.models): Instruct and Thinking differ.
        default_temperature=settings.sampling_defaults().temperature,
        default_top_p=settings.sampling_defaults().top_p,
        default_presence_penalty=settings.sampling_defaults().presence_penalty,
        concurrency=settings.max_queue + 1,  # more would only meet the server's 429
    )
    page = build_page(config)
    auth: Callable[[str, str], bool] | None = None
    if key:

        def auth(_user: str, password: str) -> bool:
            return secrets.compare_digest(password.encode(), key.encode())

    gr.mount_gradio_app(
        app,
        page,
        path=path,
        auth=auth,
        auth_message="用户名随便填，密码是服务器的 API key。Any user name; password: the server's API key.",
        allowed_paths=[str(IMAGES_DIR)],
        css=PAGE_CSS,
        js=PAGE_JS,
        max_file_size=settings.max_media_bytes,
        footer_links=["api"],
        run_history=False,
        ssr_mode=False,
        mcp_server=False,
    )
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_: Any):
        try:
            async with inner(app_) as state:
                yield state
        finally:
            shutil.rmtree(upload_root, ignore_errors=True)  # every session's uploads go with the process

    app.router.lifespan_context = lifespan
    return True


# ------------------------------------------------------------------------ CLI
def create_standalone_app(settings: Settings, base_url: str, api_key: str | None) -> FastAPI:
    """A small app that only serves the page (``/`` redirects to it) in front of a remote API."""
    from fastapi import FastAPI
    from fastapi.responses import RedirectResponse

    app = FastAPI(title="Qwen3-VL web chat", docs_url=None, redoc_url=None)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse(UI_PATH + "/")

    if not mount_ui(app, settings, base_url=base_url, api_key=api_key or ""):
        raise SystemExit("gradio is not installed: pip install -r requirements.txt")
    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from helpers.config import ConfigError, Settings

    parser = argparse.ArgumentParser(prog="python -m helpers.webui", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--base-url",
        help=f"the API server (default ${endpoints.BASE_URL_ENV} or {endpoints.DEFAULT_BASE_URL})",
    )
    parser.add_argument(
        "--api-key", help=f"its API key, also the page's password (default ${endpoints.API_KEY_ENV})"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address of this page (0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=7860, help="port of this page")
    args = parser.parse_args(argv)
    # The same reading of QWEN3VL_BASE_URL / QWEN3VL_API_KEY as every other client of the tutorial.
    base_url, api_key = endpoints.base_url(args.base_url), endpoints.api_key(args.api_key)
    try:
        settings = Settings.from_env(host=args.host, port=args.port)  # limits and defaults as the server's
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"web chat for {base_url}: http://{args.host}:{args.port}{UI_PATH}/", flush=True)
    uvicorn.run(
        create_standalone_app(settings, base_url, api_key),
        host=args.host,
        port=args.port,
        timeout_graceful_shutdown=5,  # open pages keep an event stream: do not wait for them forever
    )


if __name__ == "__main__":
    main()
