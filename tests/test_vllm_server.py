"""The vLLM command line built from Settings, the client base-URL helper, and the launcher's marker.

No vLLM needed: these run in ``make test``. The vLLM contract itself (a real
vLLM process) is tests_vllm/, run by ``make test-vllm``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import bench, client, launcher
from helpers.config import Settings
from helpers.vllm_server import ENTRY_MODULE, printable, vllm_command, vllm_env


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


@pytest.fixture
def model_dir(tmp_path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 8192}}))
    return tmp_path


def settings(**changes) -> Settings:
    return Settings.from_env({}, **{"model": "demo", **changes})


def test_the_command_carries_every_serving_setting(model_dir, tmp_path):
    chosen = settings(
        host="0.0.0.0",
        port=7000,
        api_key="secret",
        allowed_local_media_path=[tmp_path],
        max_images_per_request=3,
        max_videos_per_request=2,
        image_max_pixels=512 * 1024,
        video_fps=1.5,
        presence_penalty=0.5,
    )
    command = vllm_command(chosen, "/venv/bin/python", model_dir, cpu=True)
    assert command[:3] == ["/venv/bin/python", "-m", ENTRY_MODULE]
    assert flag(command, "--model") == str(model_dir)
    assert flag(command, "--served-model-name") == "demo"  # clients see the same name as from ours
    assert (flag(command, "--host"), flag(command, "--port"), flag(command, "--api-key")) == (
        "0.0.0.0",
        "7000",
        "secret",
    )
    assert flag(command, "--allowed-local-media-path") == str(tmp_path.resolve())
    assert json.loads(flag(command, "--limit-mm-per-prompt")) == {"image": 3, "video": 2}
    kwargs = json.loads(flag(command, "--mm-processor-kwargs"))
    assert kwargs["images_kwargs"]["max_pixels"] == 512 * 1024
    assert kwargs["videos_kwargs"]["fps"] == 1.5
    assert kwargs["videos_kwargs"]["max_video_tokens"] * 1024 == chosen.video_max_pixels
    # Sampling defaults only: a max_new_tokens there would cap every request (see test_vllm_defaults.py).
    assert json.loads(flag(command, "--override-generation-config")) == {"presence_penalty": 0.5}
    assert flag(command, "--hf-config-path").endswith("vllm-config-7000")
    assert "--enable-auto-tool-choice" in command and flag(command, "--tool-call-parser") == "hermes"
    assert flag(command, "--dtype") == "float32" and "--enforce-eager" in command


def test_max_model_len_is_capped_at_the_models_context(model_dir):
    assert (
        flag(vllm_command(settings(max_model_len=32768), "py", model_dir, cpu=True), "--max-model-len")
        == "8192"
    )
    assert (
        flag(vllm_command(settings(max_model_len=4096), "py", model_dir, cpu=True), "--max-model-len")
        == "4096"
    )


def test_on_a_gpu_dtype_follows_the_model_and_cuda_graphs_stay_on(model_dir):
    command = vllm_command(settings(), "py", model_dir, cpu=False, extra_args=["--tensor-parallel-size", "2"])
    assert flag(command, "--dtype") == "auto"
    assert "--enforce-eager" not in command and "--skip-mm-profiling" not in command
    assert command[-2:] == ["--tensor-parallel-size", "2"]
    assert "--api-key" not in command and "--allowed-local-media-path" not in command


def test_vllm_never_reports_usage_and_never_reaches_a_model_hub():
    env = vllm_env(settings(), cpu=True)
    assert env["VLLM_NO_USAGE_STATS"] == "1" and env["DO_NOT_TRACK"] == "1" and env["HF_HUB_OFFLINE"] == "1"


def test_the_printed_command_masks_the_api_key_and_can_be_pasted(model_dir):
    command = vllm_command(settings(api_key="secret"), "/venv/bin/python", model_dir, cpu=True)
    line = printable(command, {"VLLM_NO_USAGE_STATS": "1"})
    assert "secret" not in line and '"$QWEN3VL_API_KEY"' in line
    assert line.startswith("VLLM_NO_USAGE_STATS=1 /venv/bin/python -m vllm.entrypoints.openai.api_server")
    assert '\'{"image": 4, "video": 1}\'' in line  # JSON arguments are shell-quoted


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("http://10.0.0.5:6006", "http://10.0.0.5:6006"),
        ("http://10.0.0.5:6006/", "http://10.0.0.5:6006"),
        (" https://example.org/v1/ ", "https://example.org"),
    ],
)
def test_the_base_url_accepts_a_root_or_a_v1_url(raw, expected):
    assert client.base_url(environ={"QWEN3VL_BASE_URL": raw}) == expected


def test_without_settings_clients_talk_to_the_local_default_without_a_key():
    assert client.base_url(environ={}) == "http://127.0.0.1:6006"
    assert client.base_url_from_env({}) is None
    assert client.auth_headers(environ={}) == {}
    assert client.auth_headers(environ={"QWEN3VL_API_KEY": "k"}) == {"Authorization": "Bearer k"}
    assert client.base_url("http://a:1", environ={"QWEN3VL_BASE_URL": "http://b:2"}) == "http://a:1"


def test_a_base_url_without_a_scheme_is_refused():
    with pytest.raises(ValueError, match="http"):
        client.base_url(environ={"QWEN3VL_BASE_URL": "10.0.0.5:6006"})


def test_the_openai_client_gets_the_v1_url_and_the_key(monkeypatch):
    monkeypatch.setenv("QWEN3VL_BASE_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("QWEN3VL_API_KEY", "class-key")
    sdk = client.openai_client()
    assert str(sdk.base_url) == "http://127.0.0.1:9/v1/" and sdk.api_key == "class-key"
    assert sdk.max_retries == 0


def wait_for_exec(process: subprocess.Popen, text: str) -> None:
    """Until the child's command line shows ``text``: right after fork it is still the parent's."""
    cmdline = Path(f"/proc/{process.pid}/cmdline")
    deadline = time.monotonic() + 30
    while text not in cmdline.read_bytes().decode(errors="replace"):
        assert time.monotonic() < deadline, f"{text} never started"
        time.sleep(0.01)


def test_a_leftover_pid_file_never_stops_a_program_with_another_command_line(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        wait_for_exec(other, "time.sleep(60)")
        (tmp_path / "server-5999.pid").write_text(f"{other.pid} {ENTRY_MODULE}\n")
        assert not launcher.stop_leftover(5999, tmp_path)
        assert other.poll() is None  # still running: it is not vLLM
    finally:
        other.kill()
        other.wait()


def test_a_leftover_matching_its_marker_is_stopped(tmp_path):
    marker = "leftover-marker-for-test"
    leftover = subprocess.Popen(
        [sys.executable, "-c", "import time, sys; time.sleep(60)", marker], start_new_session=True
    )
    wait_for_exec(leftover, marker)
    (tmp_path / "server-5998.pid").write_text(f"{leftover.pid} {marker}\n")
    assert launcher.stop_leftover(5998, tmp_path)
    assert leftover.wait(timeout=30) is not None
    assert not (tmp_path / "server-5998.pid").exists()


def test_the_comparison_table_and_plot_show_both_servers(tmp_path):
    def level(c, rps_ours, rps_vllm):
        entry = {"latency_p50_s": 1.0, "latency_p99_s": 2.0}
        return {
            "concurrency": c,
            "requests": 2 * c,
            "ours": {**entry, "requests_per_s": rps_ours},
            "vLLM": {**entry, "requests_per_s": rps_vllm},
        }

    results = {
        "targets": ["ours", "vLLM"],
        "max_tokens": 64,
        "levels": [level(1, 0.5, 1.0), level(8, 0.5, 4.0)],
    }
    table = bench.format_compare_table(results)
    assert "8.0×" in table and "vLLM 4.0×" in table and "ours 1.0×" in table
    path = bench.plot_compare(results, tmp_path / "compare.png")
    assert path.stat().st_size > 10_000


def test_print_only_prints_the_command_with_the_pass_through_arguments_and_starts_nothing(
    tmp_path, capsys, monkeypatch
):
    import shlex

    from helpers import vllm_server

    monkeypatch.setattr(vllm_server, "start_vllm", lambda *a, **k: pytest.fail("--print-only started vLLM"))
    venv = tmp_path / "venv-not-built-yet"
    code = vllm_server.main(
        ["--model", "demo", "--port", "7001", "--venv", str(venv), "--print-only", "--", "--seed", "7"]
    )
    assert code == 0
    words = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    assert words[-2:] == ["--seed", "7"]  # after `--`: handed to vLLM unchanged, at the end
    assert str(venv) in next(w for w in words if w.endswith("python")) and flag(words, "--port") == "7001"
    assert "vllm.entrypoints.openai.api_server" in words
