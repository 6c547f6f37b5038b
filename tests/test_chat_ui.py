"""The chat UI's logic without a browser: message building, history, streaming into the output, the widget."""

from __future__ import annotations

import base64
import io

import pytest
from conftest import API_KEY
from PIL import Image

from helpers.assets import CAT_PHOTO_PATH, IMAGES_DIR
from helpers.chat_ui import (
    ChatSession,
    build_chat_widget,
    build_user_message,
    chat_turn,
    data_uri,
    image_mime_type,
    scripted_chat,
    uploaded_image,
)
from helpers.display import DEMO_BANNER


def png_bytes(size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def decoded(uri: str) -> bytes:
    return base64.b64decode(uri.split(",", 1)[1])


# ------------------------------------------------------------- message building
@pytest.mark.parametrize(
    ("name", "mime"),
    [
        ("photo.png", "image/png"),
        ("photo.JPG", "image/jpeg"),
        ("a.webp", "image/webp"),
        ("upload", "image/png"),
    ],
)
def test_mime_type_comes_from_the_name_else_from_the_bytes(name, mime):
    assert image_mime_type(png_bytes(), name) == mime


def test_bytes_that_are_no_image_are_refused():
    with pytest.raises(ValueError, match="not an image"):
        data_uri(b"just some text", "notes.txt")


def test_text_only_message_is_a_plain_string():
    assert build_user_message("你好") == {"role": "user", "content": "你好"}


def test_uploaded_bytes_become_a_data_uri_part_before_the_text():
    data = png_bytes()
    message = build_user_message("这是什么？", (data, "green.png"))
    image_part, text_part = message["content"]
    assert message["role"] == "user" and text_part == {"type": "text", "text": "这是什么？"}
    assert image_part["type"] == "image_url"
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,") and decoded(url) == data


def test_an_asset_path_becomes_a_jpeg_data_uri():
    url = build_user_message("?", CAT_PHOTO_PATH)["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,") and decoded(url) == CAT_PHOTO_PATH.read_bytes()


def test_file_upload_values_of_ipywidgets_7_and_8_are_read():
    data = png_bytes()
    assert uploaded_image(()) is None and uploaded_image({}) is None
    v8 = ({"name": "x.png", "type": "image/png", "size": len(data), "content": memoryview(data)},)
    assert uploaded_image(v8) == (data, "x.png")
    v7 = {"y.png": {"metadata": {"name": "y.png"}, "content": data}}
    assert uploaded_image(v7) == (data, "y.png")
    url = build_user_message("?", v8[0])["content"][0]["image_url"]["url"]
    assert decoded(url) == data


# ------------------------------------------------------------ against a server
@pytest.fixture
def session(live_server):
    return ChatSession(live_server.base_url, api_key=API_KEY, max_tokens=12, temperature=0)


def test_session_names_the_served_model_and_knows_it_is_the_demo(session):
    assert session.model == "demo" and session.demo is True and session.history == []


def test_streamed_pieces_join_to_the_stored_answer_and_history_grows(session):
    pieces: list[str] = []
    answer = session.send("Hello, who are you?", on_piece=pieces.append)
    assert len(pieces) > 1 and "".join(pieces) == answer
    assert session.history == [
        {"role": "user", "content": "Hello, who are you?"},
        {"role": "assistant", "content": answer},
    ]
    assert session.last_usage.completion_tokens == 12

    second = session.send("What is in this picture?", image=CAT_PHOTO_PATH)
    assert len(session.history) == 4 and session.turns() == 2
    assert session.history[2]["content"][0]["image_url"]["url"].startswith("data:image/jpeg")
    assert session.history[3] == {"role": "assistant", "content": second}
    assert session.last_usage.prompt_tokens > 100  # the whole conversation plus the picture's tokens


def test_a_failed_turn_leaves_the_history_unchanged(session):
    import openai

    session.send("first question")
    before = list(session.history)
    with pytest.raises(openai.BadRequestError):
        session.send("too long", max_tokens=10**6)
    with pytest.raises(ValueError, match="empty"):
        session.send("   ")
    assert session.history == before


def test_reset_forgets_everything_but_the_system_prompt(live_server):
    session = ChatSession(live_server.base_url, api_key=API_KEY, max_tokens=4, system="You are concise.")
    session.send("hi")
    assert len(session.history) == 3
    session.reset()
    assert session.history == [{"role": "system", "content": "You are concise."}]
    assert session.last_usage is None


def test_a_turn_shows_question_banner_and_streamed_answer(session):
    written: list[str] = []
    turn = chat_turn(session, "Describe the picture.", CAT_PHOTO_PATH, write=written.append)
    screen = "".join(written)
    assert screen.startswith("🧑 Describe the picture.  [图片：cat.jpg]\n" + DEMO_BANNER + "\n")
    assert turn.streamed == turn.answer == session.history[-1]["content"]
    assert turn.answer in screen and turn.image_name == "cat.jpg"


def test_scripted_chat_runs_turns_unattended(session):
    turns = scripted_chat(session, [("你好", None), ("这是什么动物？", CAT_PHOTO_PATH)], write=lambda _: None)
    assert [t.image_name for t in turns] == [None, "cat.jpg"]
    assert len(session.history) == 4
    assert [t.streamed for t in turns] == [session.history[1]["content"], session.history[3]["content"]]


def test_the_widget_sends_the_typed_question_with_the_picked_asset_and_clears(session):
    import ipywidgets as widgets

    box = build_chat_widget(session)
    (upload, picker), question, (send, clear, status), output = (
        box.children[0].children,
        box.children[1],
        box.children[2].children,
        box.children[3],
    )
    assert isinstance(upload, widgets.FileUpload) and isinstance(output, widgets.Output)
    assert {p.name for _, p in picker.options if p} >= {"cat.jpg", "shapes_scene.png", "ocr_sample.png"}
    assert all(p is None or p.parent == IMAGES_DIR for _, p in picker.options)

    send.click()  # nothing typed: nothing is sent
    assert session.history == [] and "请先输入问题" in status.value

    question.value = "这是什么？"
    picker.value = CAT_PHOTO_PATH
    send.click()
    assert session.turns() == 1 and question.value == "" and not send.disabled
    assert session.history[0]["content"][0]["image_url"]["url"].startswith("data:image/jpeg")
    assert "1 轮对话" in status.value

    clear.click()
    assert session.history == [] and "已清空" in status.value


def test_a_video_file_becomes_a_video_data_uri():
    from helpers.assets import MOVING_CLIP_PATH

    uri = data_uri(MOVING_CLIP_PATH.read_bytes(), MOVING_CLIP_PATH.name)
    assert uri.startswith("data:video/mp4;base64,")
