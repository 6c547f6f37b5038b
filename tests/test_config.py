"""Settings parsing and model resolution."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from helpers.config import DEFAULT_MODEL, ConfigError, ModelNotFoundError, Settings, default_model_root


def test_defaults_follow_the_design():
    s = Settings.from_env({})
    assert s.model == DEFAULT_MODEL
    assert (s.host, s.port) == ("127.0.0.1", 6006)
    assert s.allowed_local_media_path == []
    assert s.allow_private_network_media is False
    assert s.api_key is None
    assert (s.device, s.dtype) == ("auto", "auto")
    assert s.resolved_model_root == default_model_root()


def test_environment_variables_are_parsed_to_their_types(tmp_path):
    env = {
        "QWEN3VL_MODEL": "demo",
        "QWEN3VL_PORT": "8000",
        "QWEN3VL_ALLOW_PRIVATE_NETWORK_MEDIA": "yes",
        "QWEN3VL_ALLOWED_LOCAL_MEDIA_PATH": f"{tmp_path}/a,{tmp_path}/b",
        "QWEN3VL_VIDEO_FPS": "1.5",
        "QWEN3VL_MODEL_ROOT": str(tmp_path),
        "QWEN3VL_API_KEY": "",  # empty means unset
    }
    s = Settings.from_env(env)
    assert s.is_demo and s.port == 8000 and s.allow_private_network_media is True
    assert s.allowed_local_media_path == [tmp_path / "a", tmp_path / "b"]
    assert s.video_fps == 1.5 and s.model_root == tmp_path and s.api_key is None


def test_keyword_overrides_win_over_the_environment():
    s = Settings.from_env({"QWEN3VL_PORT": "8000"}, port=9000)
    assert s.port == 9000


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"QWEN3VL_PORT": "http"}, "QWEN3VL_PORT='http' is not a valid int"),
        ({"QWEN3VL_PORT": "70000"}, "outside 1-65535"),
        ({"QWEN3VL_DEVICE": "tpu"}, "device 'tpu'"),
        ({"QWEN3VL_DTYPE": "int3"}, "dtype 'int3'"),
        ({"QWEN3VL_ALLOW_PRIVATE_NETWORK_MEDIA": "maybe"}, "not a valid bool"),
        ({"QWEN3VL_MAX_QUEUE": "0"}, "max_queue must be positive"),
        ({"QWEN3VL_MAX_QUEUE": "2.5"}, "not a valid int"),
        ({"QWEN3VL_IMAGE_MIN_PIXELS": "99999999"}, "image_min_pixels is larger"),
        ({"QWEN3VL_DEFAULT_MAX_NEW_TOKENS": "99999"}, "default_max_new_tokens is larger"),
    ],
)
def test_bad_values_are_rejected_with_the_variable_named(env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Settings.from_env(env)


def test_unknown_override_is_rejected():
    with pytest.raises(ConfigError, match="unknown setting"):
        Settings.from_env({}, modle="demo")


def test_flags_fall_back_to_the_environment(tmp_path):
    parser = argparse.ArgumentParser()
    Settings.add_arguments(parser)
    args = parser.parse_args(
        ["--port", "7000", "--allowed-local-media-path", str(tmp_path), "--allowed-local-media-path", "/srv"]
    )
    s = Settings.from_args(args, {"QWEN3VL_API_KEY": "secret", "QWEN3VL_PORT": "1"})
    assert s.port == 7000 and s.api_key == "secret"
    assert s.allowed_local_media_path == [tmp_path, Path("/srv")]
    assert parser.parse_args(["--allow-private-network-media"]).allow_private_network_media is True


def test_model_id_resolves_under_the_model_root(tmp_path):
    folder = tmp_path / "Qwen" / "Qwen3-VL-4B-Instruct"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"x")
    s = Settings.from_env({}, model_root=tmp_path)
    assert s.resolve_model_path() == folder


def test_missing_download_names_the_folder_and_the_fixes(tmp_path):
    s = Settings.from_env({}, model_root=tmp_path)
    with pytest.raises(ModelNotFoundError) as info:
        s.resolve_model_path()
    message = str(info.value)
    assert str(tmp_path / "Qwen" / "Qwen3-VL-4B-Instruct") in message
    assert "python -m helpers.download" in message
    assert "01_download_model" in message
    assert "QWEN3VL_MODEL=demo" in message


def test_a_folder_without_weights_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match=r"holds no config\.json"):
        Settings.from_env({}, model=str(tmp_path)).resolve_model_path()


def test_a_folder_is_used_as_is(demo_checkpoint):
    s = Settings.from_env({}, model=str(demo_checkpoint))
    assert s.resolve_model_path() == demo_checkpoint


def test_demo_resolves_to_the_built_checkpoint(demo_checkpoint):
    assert Settings.from_env({}, model="demo").resolve_model_path() == demo_checkpoint
