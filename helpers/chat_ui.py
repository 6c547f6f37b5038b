"""A chat with the API server for notebooks: the logic (testable without a browser) and its ipywidgets face.

    session = ChatSession(server.base_url)               # talks to /v1 with the openai SDK
    session = ChatSession()                              # ... to $QWEN3VL_BASE_URL (helpers/client.py)
    session.send("这张图里有什么？", image=CAT_PHOTO_PATH, on_piece=print)
    display(build_chat_widget(session))                  # upload / pick a picture, ask, watch it stream
    scripted_chat(session, [("你好", None), ("这是什么动物？", CAT_PHOTO_PATH)])  # the same, unattended

The history is a list of OpenAI-format messages kept on the client, as with
any OpenAI-compatible server: every turn sends the whole conversation again
(pictures included, as ``data:`` URIs), because the server remembers nothing
between requests.
"""

from __future__ import annotations

import base64
import io
import mimetypes
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helpers.display import banner

if TYPE_CHECKING:
    import ipywidgets

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")

# What ``image=`` accepts: a file path, (bytes, filename), or one FileUpload entry (a mapping
# with "name" and "content", as ipywidgets 8 gives it).
ImageInput = str | Path | tuple[bytes, str] | Mapping[str, Any]


# ------------------------------------------------------------------ messages
def image_mime_type(data: bytes, filename: str = "") -> str:
    """``image/png``, ``image/jpeg``, ... from the file name, else from the bytes; ValueError if no image."""
    guessed, _ = mimetypes.guess_type(filename)
    if guessed and guessed.startswith("image/"):
        return guessed
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            mime = Image.MIME.get(image.format or "")
    except (UnidentifiedImageError, OSError):
        mime = None
    if not mime:
        raise ValueError(f"{filename or 'the upload'} is not an image this chat can send")
    return mime


def data_uri(data: bytes, filename: str = "") -> str:
    """``data:<mime>;base64,...``: a picture (or a video, by its file name) inline in a request.

    The server then needs no access to the file, so this works against any
    server, a remote one included.
    """
    guessed, _ = mimetypes.guess_type(filename)
    mime = guessed if guessed and guessed.startswith("video/") else image_mime_type(data, filename)
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def read_image_input(image: ImageInput) -> tuple[bytes, str]:
    """(bytes, filename) of a path, a (bytes, filename) pair, or a FileUpload entry."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        return path.read_bytes(), path.name
    if isinstance(image, Mapping):
        return bytes(image["content"]), str(image.get("name", ""))
    if isinstance(image, tuple) and len(image) == 2:
        data, name = image
        return bytes(data), str(name)
    raise TypeError(f"unsupported image input: {type(image).__name__}")


def build_user_message(text: str, image: ImageInput | None = None) -> dict[str, Any]:
    """A user turn in OpenAI format: plain text, or an ``image_url`` part (data: URI) followed by the text."""
    if image is None:
        return {"role": "user", "content": text}
    data, name = read_image_input(image)
    return {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": data_uri(data, name)}},
            {"type": "text", "text": text},
        ],
    }


def uploaded_image(value: Any) -> tuple[bytes, str] | None:
    """The first file of a ``FileUpload.value`` (ipywidgets 8: tuple of dicts; 7: dict name -> dict)."""
    if not value:
        return None
    if isinstance(value, Mapping):  # ipywidgets 7
        name, entry = next(iter(value.items()))
        return bytes(entry["content"]), str(name)
    entry = value[0]
    return bytes(entry["content"]), str(entry["name"])


def asset_images(folder: Path | None = None) -> list[Path]:
    """The pictures in ``images/`` (the dropdown's choices)."""
    if folder is None:
        from helpers.assets import IMAGES_DIR

        folder = IMAGES_DIR
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


# ------------------------------------------------------------------- session
class ChatSession:
    """A conversation with an OpenAI-compatible server: history + streaming with the ``openai`` SDK."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        model: str | None = None,
        max_tokens: int = 256,
        temperature: float | None = None,
        system: str | None = None,
        demo: bool | None = None,
    ) -> None:
        from helpers.client import base_url as chosen_base_url
        from helpers.client import openai_client, served_model

        # None: $QWEN3VL_BASE_URL / $QWEN3VL_API_KEY (helpers/client.py), so the same code talks
        # to our server, to vLLM or to the instructor's machine.
        self.base_url = chosen_base_url(base_url)
        self.client = openai_client(self.base_url, api_key)
        self.model = model or served_model(self.client)  # the server names its model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.system = system
        self.demo = self._server_is_demo() if demo is None else demo
        self.history: list[dict[str, Any]] = []
        self.last_usage: Any = None
        self.reset()

    def _server_is_demo(self) -> bool:
        from helpers.launcher import health

        _, body = health(self.base_url)
        return bool(body.get("demo", self.model == "demo"))

    def reset(self) -> None:
        """Forget the conversation (the system prompt, if any, stays)."""
        self.history = [{"role": "system", "content": self.system}] if self.system else []
        self.last_usage = None

    def send(
        self,
        text: str,
        image: ImageInput | None = None,
        on_piece: Callable[[str], Any] | None = None,
        **params: Any,
    ) -> str:
        """Ask ``text`` (with an optional picture); stream the answer into ``on_piece``; return it.

        The question and the answer are added to :attr:`history` only when the
        answer arrived completely, so a failed turn leaves the history as it was.
        ``params`` go to ``chat.completions.create`` (e.g. ``max_tokens=32``).
        """
        if not text or not text.strip():
            raise ValueError("the question is empty")
        message = build_user_message(text, image)
        options = {"max_tokens": self.max_tokens, **params}
        if self.temperature is not None:
            options.setdefault("temperature", self.temperature)
        stream = self.client.chat.completions.create(
            model=self.model,
            messages=[*self.history, message],
            stream=True,
            stream_options={"include_usage": True},
            **options,
        )
        pieces: list[str] = []
        for chunk in stream:
            if chunk.usage is not None:
                self.last_usage = chunk.usage
            if not chunk.choices:
                continue
            piece = chunk.choices[0].delta.content
            if piece:
                pieces.append(piece)
                if on_piece is not None:
                    on_piece(piece)
        answer = "".join(pieces)
        self.history += [message, {"role": "assistant", "content": answer}]
        return answer

    def turns(self) -> int:
        """How many question/answer pairs the history holds."""
        return sum(1 for m in self.history if m["role"] == "assistant")


# ---------------------------------------------------------------------- turns
@dataclass
class Turn:
    """One question and answer, as shown on screen."""

    question: str
    image_name: str | None
    streamed: str  # the pieces shown while streaming, joined
    answer: str  # what was stored in the history


def _write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def chat_turn(
    session: ChatSession,
    text: str,
    image: ImageInput | None = None,
    write: Callable[[str], Any] = _write_stdout,
    **params: Any,
) -> Turn:
    """One turn exactly as the widget shows it: the question, the banner, then the answer as it streams."""
    image_name = read_image_input(image)[1] if image is not None else None
    write(f"🧑 {text}" + (f"  [图片：{image_name}]" if image_name else "") + "\n")
    write(banner(session.demo) + "\n")
    shown: list[str] = []

    def on_piece(piece: str) -> None:
        shown.append(piece)
        write(piece)

    answer = session.send(text, image, on_piece=on_piece, **params)
    write("\n\n")
    return Turn(text, image_name, "".join(shown), answer)


def scripted_chat(
    session: ChatSession,
    turns: Iterable[tuple[str, ImageInput | None]],
    write: Callable[[str], Any] = _write_stdout,
    **params: Any,
) -> list[Turn]:
    """The widget's stand-in: run ``(question, image)`` turns unattended through :func:`chat_turn`."""
    return [chat_turn(session, text, image, write, **params) for text, image in turns]


# --------------------------------------------------------------------- widget
NO_IMAGE = "（不带图片）"


def build_chat_widget(session: ChatSession, assets: Path | None = None) -> ipywidgets.VBox:
    """The chat UI: upload a picture or pick one from ``images/``, type, send, watch the answer stream.

    The button runs :func:`chat_turn` inside an ``Output`` area; an uploaded
    picture wins over the dropdown and is used for one question only.
    """
    import ipywidgets as widgets

    upload = widgets.FileUpload(accept="image/*", multiple=False, description="上传图片")
    picker = widgets.Dropdown(
        options=[(NO_IMAGE, None)] + [(p.name, p) for p in asset_images(assets)],
        value=None,
        description="或选示例图",
        style={"description_width": "initial"},
    )
    question = widgets.Textarea(placeholder="输入你的问题，然后点“发送”", layout=widgets.Layout(width="100%"))
    send = widgets.Button(description="发送", button_style="primary", icon="paper-plane")
    clear = widgets.Button(description="清空对话", icon="trash")
    status = widgets.HTML(value=f"模型：<code>{session.model}</code>")
    output = widgets.Output(layout=widgets.Layout(border="1px solid #ddd", padding="6px", min_height="120px"))

    def on_send(_button: Any) -> None:
        text = question.value.strip()
        if not text:
            status.value = "请先输入问题。"
            return
        image = uploaded_image(upload.value) or picker.value
        send.disabled = True
        status.value = "生成中 …"
        try:
            with output:
                chat_turn(session, text, image, write=_write_stdout)
            question.value = ""
            upload.value = ()  # an upload is for one question; the dropdown choice stays
            status.value = f"模型：<code>{session.model}</code> · 已有 {session.turns()} 轮对话"
        except Exception as exc:  # show it in the UI instead of losing it in a callback
            status.value = f"出错了：{type(exc).__name__}: {exc}"
        finally:
            send.disabled = False

    def on_clear(_button: Any) -> None:
        session.reset()
        output.clear_output()
        status.value = f"模型：<code>{session.model}</code> · 对话已清空"

    send.on_click(on_send)
    clear.on_click(on_clear)
    box = widgets.VBox(
        [widgets.HBox([upload, picker]), question, widgets.HBox([send, clear, status]), output]
    )
    return box
