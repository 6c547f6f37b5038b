"""helpers.env_check: the rows on this machine, with GPU facts faked, and the exit codes."""

from __future__ import annotations

import socket
import subprocess
import threading

import pytest
import requests

from helpers import env_check
from helpers.config import DEFAULT_MODEL, Settings
from helpers.env_check import FAIL, OK, STATUSES, WARN, CheckRow, DriverInfo, GpuDevice, TorchInfo

GIB = 1024**3
OFFLINE = {"QWEN3VL_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
RTX_4090 = GpuDevice("NVIDIA GeForce RTX 4090", 24 * GIB, 23 * GIB, (8, 9))


def row(rows: list[CheckRow], name: str) -> CheckRow:
    matches = [r for r in rows if r.name == name]
    assert len(matches) == 1, f"expected one row {name!r} in {[r.name for r in rows]}"
    return matches[0]


@pytest.fixture
def no_network(monkeypatch):
    """Name lookups and the ModelScope probe fail the test if anything tries them."""

    def refuse(*args, **kwargs):
        raise AssertionError("the environment check tried to reach the network")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(env_check, "modelscope_reachable", refuse)


@pytest.fixture
def gpu_machine(monkeypatch, tmp_path):
    """An AutoDL-like RTX 4090 box, faked at the function boundary; returns a settings factory."""
    monkeypatch.setattr(env_check, "torch_info", lambda: TorchInfo("2.8.0+cu128", "0.23.0+cu128", "12.8"))
    monkeypatch.setattr(env_check, "gpu_devices", lambda: [RTX_4090])
    monkeypatch.setattr(env_check, "driver_info", lambda: DriverInfo("570.124.04", "12.8"))
    monkeypatch.setattr(env_check, "memory_info", lambda: (64 * GIB, 60 * GIB))
    monkeypatch.setattr(env_check, "free_disk_bytes", lambda path: 50 * GIB)

    def settings(**overrides) -> Settings:
        return Settings(model_root=tmp_path / "models", **overrides)

    return settings


# ------------------------------------------------------------ this machine
def test_this_machine_in_demo_mode_has_no_failure_and_the_command_exits_0(no_network, monkeypatch, capsys):
    """`make check` (main) once on this machine; its rows are read from the same run."""
    for name, value in {**OFFLINE, "QWEN3VL_MODEL": "demo"}.items():
        monkeypatch.setenv(name, value)
    runs = []
    real_run_checks = env_check.run_checks
    monkeypatch.setattr(
        env_check, "run_checks", lambda *a, **k: runs.append(real_run_checks(*a, **k)) or runs[-1]
    )
    assert env_check.main([]) == 0
    out = capsys.readouterr().out
    assert "检查项" in out and "Python" in out and "❌ 0" in out
    (rows,) = runs
    assert all(r.status in STATUSES for r in rows)
    assert len({r.name for r in rows}) == len(rows)
    assert [r for r in rows if r.status == FAIL] == []
    assert all(r.fix for r in rows if r.status != OK), "every ⚠️ / ❌ says how to fix it"
    for name in ("Python", "PyTorch", "transformers", "qwen-vl-utils", "accelerate", "av", "视频读取：PyAV"):
        assert row(rows, name).status == OK, row(rows, name)
    assert "含 Qwen3-VL" in row(rows, "transformers").value
    assert "解码 4 帧" in row(rows, "视频读取：PyAV").value
    assert "离线" in row(rows, "ModelScope 网络").value
    assert "演示模式" in row(rows, "显存估算（默认预算）").value
    gpu_expected = OK if env_check.gpu_devices() else WARN
    assert row(rows, "GPU / 显存").status == gpu_expected


# ----------------------------------------------------------- faked GPU facts
def test_rtx_4090_rows_are_all_green_for_the_4b_model(gpu_machine, no_network):
    rows = env_check.run_checks(gpu_machine(model=DEFAULT_MODEL), environ=OFFLINE)
    for name in ("GPU / 显存", "CUDA", "NVIDIA 驱动", "bf16", "内存", "磁盘空间", "显存估算（默认预算）"):
        assert row(rows, name).status == OK, row(rows, name)
    assert "RTX 4090" in row(rows, "GPU / 显存").value
    assert "24.0 GiB" in row(rows, "GPU / 显存").value
    assert "≤ 显存" in row(rows, "显存估算（默认预算）").value
    weights = row(rows, "模型权重")
    assert weights.status == WARN and "python -m helpers.download" in weights.fix


FAKED = {
    "8 GiB GPU cannot hold the 4B weights": (
        {"gpu_devices": [GpuDevice("RTX 3070", 8 * GIB, 7 * GIB, (8, 6))]},
        DEFAULT_MODEL,
        "显存估算（默认预算）",
        FAIL,
        "小一号的模型",
    ),
    "12 GiB GPU holds the 4B weights but not the largest request": (
        {"gpu_devices": [GpuDevice("RTX 3060", 12 * GIB, 11 * GIB, (8, 6))]},
        DEFAULT_MODEL,
        "显存估算（默认预算）",
        FAIL,
        "QWEN3VL_IMAGE_MAX_PIXELS",
    ),
    "8 GiB GPU is only a warning in demo mode": (
        {"gpu_devices": [GpuDevice("RTX 3070", 8 * GIB, 7 * GIB, (8, 6))]},
        "demo",
        "显存估算（默认预算）",
        WARN,
        "GPU",
    ),
    "pre-Ampere GPU has no bf16": (
        {"gpu_devices": [GpuDevice("Tesla T4", 15 * GIB, 14 * GIB, (7, 5))]},
        DEFAULT_MODEL,
        "bf16",
        WARN,
        "QWEN3VL_DTYPE=float16",
    ),
    "driver one CUDA major too old": (
        {"driver_info": DriverInfo("470.82", "11.4")},
        DEFAULT_MODEL,
        "NVIDIA 驱动",
        FAIL,
        "驱动太旧",
    ),
    "driver too old is a warning in demo mode": (
        {"driver_info": DriverInfo("470.82", "11.4")},
        "demo",
        "NVIDIA 驱动",
        WARN,
        "驱动太旧",
    ),
    "CPU-only torch on a GPU machine is a warning in demo mode": (
        {"torch_info": TorchInfo("2.8.0+cpu", "0.23.0+cpu", None), "gpu_devices": []},
        "demo",
        "CUDA",
        WARN,
        "PyTorch",
    ),
    "driver one CUDA minor too old": (
        {"driver_info": DriverInfo("535.104", "12.2")},
        DEFAULT_MODEL,
        "NVIDIA 驱动",
        WARN,
        "驱动太旧",
    ),
    "CPU-only torch on a GPU machine": (
        {"torch_info": TorchInfo("2.8.0+cpu", "0.23.0+cpu", None), "gpu_devices": []},
        DEFAULT_MODEL,
        "CUDA",
        FAIL,
        "PyTorch",
    ),
    "torch missing": (
        {"torch_info": TorchInfo(None, None, None, "ModuleNotFoundError: No module named 'torch'")},
        DEFAULT_MODEL,
        "PyTorch",
        FAIL,
        "make setup",
    ),
    "torch too old for transformers 5": (
        {"torch_info": TorchInfo("2.4.0", "0.19.0", "12.1")},
        DEFAULT_MODEL,
        "PyTorch",
        FAIL,
        "镜像",
    ),
    "torch 2.9 has the Conv3d slowdown": (
        {"torch_info": TorchInfo("2.9.1+cu128", "0.24.1+cu128", "12.8")},
        DEFAULT_MODEL,
        "PyTorch",
        WARN,
        "torch 2.8",
    ),
    "8B on a 4090 fits with its own shape": (
        {},
        "Qwen/Qwen3-VL-8B-Instruct",
        "显存估算（默认预算）",
        OK,
        "",
    ),
    "32B cannot fit a 4090 whatever the budgets": (
        {},
        "Qwen/Qwen3-VL-32B-Instruct",
        "显存估算（默认预算）",
        FAIL,
        "多张 GPU",
    ),
    "30B-A3B cannot fit a 4090 either": (
        {},
        "Qwen/Qwen3-VL-30B-A3B-Instruct",
        "显存估算（默认预算）",
        FAIL,
        "小一号的模型",
    ),
    "little RAM": (
        {"memory_info": (8 * GIB, 6 * GIB)},
        DEFAULT_MODEL,
        "内存",
        WARN,
        "内存更大",
    ),
    "disk too small for the 4B": (
        {"free_disk_bytes": 5 * GIB},
        DEFAULT_MODEL,
        "磁盘空间",
        FAIL,
        "QWEN3VL_MODEL_ROOT",
    ),
    "disk too small is a warning in demo mode": (
        {"free_disk_bytes": 5 * GIB},
        "demo",
        "磁盘空间",
        WARN,
        "QWEN3VL_MODEL_ROOT",
    ),
    "AutoDL with the weights off the data disk": (
        {"autodl_disks": {"/root/autodl-tmp": True, "/root/autodl-fs": True, "/etc/network_turbo": True}},
        DEFAULT_MODEL,
        "AutoDL",
        WARN,
        "QWEN3VL_MODEL_ROOT=/root/autodl-tmp/models",
    ),
}


@pytest.mark.parametrize("facts, model, name, status, fix", FAKED.values(), ids=FAKED.keys())
def test_faked_machine_facts_give_the_right_row(
    monkeypatch, gpu_machine, no_network, facts, model, name, status, fix
):
    for function, value in facts.items():
        monkeypatch.setattr(env_check, function, lambda *args, value=value: value)
    found = row(env_check.run_checks(gpu_machine(model=model), environ=OFFLINE), name)
    assert found.status == status, found
    assert fix in found.fix, found


NVIDIA_SMI_HEADER = """
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 570.124.04             Driver Version: 570.124.04     CUDA Version: 12.8     |
|-----------------------------------------+------------------------+----------------------+
"""


@pytest.mark.parametrize(
    ("model", "shape_name"),
    [
        ("Qwen/Qwen3-VL-2B-Instruct", "Qwen3-VL-2B"),
        (DEFAULT_MODEL, "Qwen3-VL-4B-Instruct"),
        ("Qwen/Qwen3-VL-8B-Thinking", "Qwen3-VL-8B"),
        ("Qwen/Qwen3-VL-32B-Instruct", "Qwen3-VL-32B"),
    ],
)
def test_vram_row_follows_the_model_id(gpu_machine, no_network, model, shape_name):
    found = row(env_check.run_checks(gpu_machine(model=model), environ=OFFLINE), "显存估算（默认预算）")
    assert shape_name in found.value, found
    assert ("放不下" in found.value) == (shape_name == "Qwen3-VL-32B")


def test_driver_info_reads_the_nvidia_smi_header(monkeypatch):
    def fake_run(cmd, **kwargs):
        assert cmd == ["nvidia-smi"] and kwargs["timeout"] > 0
        return subprocess.CompletedProcess(cmd, 0, stdout=NVIDIA_SMI_HEADER, stderr="")

    monkeypatch.setattr(env_check.subprocess, "run", fake_run)
    assert env_check.driver_info() == DriverInfo("570.124.04", "12.8")


def test_driver_info_is_none_without_nvidia_smi(monkeypatch):
    def missing(cmd, **kwargs):
        raise FileNotFoundError(2, "No such file or directory: 'nvidia-smi'")

    monkeypatch.setattr(env_check.subprocess, "run", missing)
    assert env_check.driver_info() is None


def test_downloaded_model_is_measured_from_its_own_files(gpu_machine, demo_checkpoint, no_network):
    rows = env_check.run_checks(gpu_machine(model=str(demo_checkpoint)), environ=OFFLINE)
    fit = row(rows, "显存估算（默认预算）")
    assert fit.status == OK and demo_checkpoint.name in fit.value and "按 4B" not in fit.value
    assert row(rows, "模型权重").status == OK
    assert "已在磁盘上" in row(rows, "磁盘空间").value


def test_autodl_with_weights_on_the_data_disk_is_green():
    settings = Settings.from_env({}, model_root="/root/autodl-tmp/models")
    found = env_check.check_autodl(settings, {"/root/autodl-tmp": True, "/root/autodl-fs": False})
    assert found.status == OK and "/root/autodl-tmp" in found.value


def test_no_gpu_is_a_warning_not_a_failure(gpu_machine, monkeypatch, no_network):
    monkeypatch.setattr(env_check, "gpu_devices", lambda: [])
    monkeypatch.setattr(env_check, "driver_info", lambda: None)
    rows = env_check.run_checks(gpu_machine(model="demo"), environ=OFFLINE)
    for name in ("GPU / 显存", "CUDA", "NVIDIA 驱动", "bf16", "显存估算（默认预算）"):
        assert row(rows, name).status == WARN, row(rows, name)


def test_a_check_that_crashes_becomes_a_warning_row(gpu_machine, monkeypatch, no_network):
    def broken():
        raise OSError("permission denied")

    monkeypatch.setattr(env_check, "memory_info", broken)
    found = row(env_check.run_checks(gpu_machine(model="demo"), environ=OFFLINE), "内存")
    assert found.status == WARN and "permission denied" in found.value


# --------------------------------------------------------------- exit codes
def test_main_exits_1_when_any_row_fails(gpu_machine, monkeypatch, capsys, no_network):
    monkeypatch.setattr(env_check, "gpu_devices", lambda: [GpuDevice("RTX 3070", 8 * GIB, 7 * GIB, (8, 6))])
    monkeypatch.setattr(Settings, "from_env", classmethod(lambda cls, *a, **k: gpu_machine(**k)))
    assert env_check.main(["--model", DEFAULT_MODEL]) == 1
    out = capsys.readouterr().out
    assert "❌" in out and "修复" in out


def test_main_exits_0_with_only_warnings(gpu_machine, monkeypatch, capsys, no_network):
    monkeypatch.setattr(env_check, "gpu_devices", lambda: [])
    monkeypatch.setattr(Settings, "from_env", classmethod(lambda cls, *a, **k: gpu_machine(**k)))
    assert env_check.main(["--model", "demo"]) == 0
    assert "⚠️" in capsys.readouterr().out


# -------------------------------------------------------------- package pins
PINS = {
    "transformers too old for Qwen3-VL": ("transformers", "4.51.0", "transformers", FAIL),
    "transformers missing": ("transformers", None, "transformers", FAIL),
    "transformers differs from the pin": ("transformers", "4.57.1", "transformers", WARN),
    "qwen-vl-utils missing": ("qwen-vl-utils", None, "qwen-vl-utils", FAIL),
    "accelerate differs from the pin": ("accelerate", "1.1.1", "accelerate", WARN),
    "av differs from the pin": ("av", "13.1.0", "av", WARN),
    "fastapi differs from the pin": ("fastapi", "0.115.4", "其他依赖", WARN),
    "modelscope missing": ("modelscope", None, "其他依赖", FAIL),
}


@pytest.mark.parametrize("package, version, name, status", PINS.values(), ids=PINS.keys())
def test_versions_are_compared_with_requirements(monkeypatch, package, version, name, status):
    real = env_check.package_version
    monkeypatch.setattr(env_check, "package_version", lambda p: version if p == package else real(p))
    pins = env_check.pinned_versions()
    found = {
        "transformers": lambda: env_check.check_transformers(pins),
        "其他依赖": lambda: env_check.check_other_pins(
            pins, {"transformers", "qwen-vl-utils", "accelerate", "av"}
        ),
    }.get(name, lambda: env_check.check_pin(name, pins))()
    assert found.status == status, found
    assert "pip install" in found.fix
    if name == "其他依赖":
        assert package in found.value


def test_pinned_versions_reads_name_equals_version_lines(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(
        "# comment\n-r other.txt\ntransformers==5.24.0\nav == 18.1.0  # video\n\nloose>=1\n"
    )
    assert env_check.pinned_versions(requirements) == {"transformers": "5.24.0", "av": "18.1.0"}


def test_requirements_pins_are_all_installed_here():
    pins = env_check.pinned_versions()
    assert {"transformers", "qwen-vl-utils", "av", "modelscope"} <= set(pins)
    assert env_check.check_other_pins(pins, set()).status != FAIL


# ------------------------------------------------------------- video readers
def test_pyav_decodes_the_clip_it_encoded():
    assert env_check.pyav_roundtrip(frames=6) == 6


def test_broken_pyav_is_a_failure(monkeypatch):
    def broken(frames: int = 4) -> int:
        raise RuntimeError("codec not found")

    monkeypatch.setattr(env_check, "pyav_roundtrip", broken)
    found = env_check.check_pyav()
    assert found.status == FAIL and "codec not found" in found.value


READERS = {
    "torchcodec without system FFmpeg": (
        "torchcodec",
        (
            False,
            "RuntimeError: Could not load libtorchcodec: libavutil.so.59: cannot open shared object file",
        ),
        env_check.check_torchcodec,
        "libavutil",
        "pip uninstall -y torchcodec",
    ),
    "decord that loads (and breaks PNG)": (
        "decord",
        (True, ""),
        env_check.check_decord,
        "PNG",
        "uninstall -y decord",
    ),
    "decord that fails": (
        "decord",
        (False, "OSError: bad ELF"),
        env_check.check_decord,
        "bad ELF",
        "uninstall",
    ),
    "flash-attn with a wrong ABI": (
        "flash_attn",
        (False, "ImportError: undefined symbol"),
        env_check.check_flash_attn,
        "undefined symbol",
        "uninstall -y flash-attn",
    ),
}


@pytest.mark.parametrize("module, result, check, value, fix", READERS.values(), ids=READERS.keys())
def test_optional_readers_that_misbehave_are_warnings(monkeypatch, module, result, check, value, fix):
    monkeypatch.setattr(env_check, "module_installed", lambda m: m == module)
    monkeypatch.setattr(env_check, "import_in_subprocess", lambda m, timeout=120: result)
    found = check()
    assert found.status == WARN, found
    assert value in found.value and fix in found.fix


@pytest.mark.parametrize(
    "check", [env_check.check_torchcodec, env_check.check_decord, env_check.check_flash_attn]
)
def test_optional_readers_not_installed_are_fine(monkeypatch, check):
    monkeypatch.setattr(env_check, "module_installed", lambda m: False)
    found = check()
    assert found.status == OK and "未安装" in found.value


def test_import_in_subprocess_reports_the_error():
    assert env_check.import_in_subprocess("json") == (True, "")
    ok, error = env_check.import_in_subprocess("no_such_module_for_this_test")
    assert not ok and "ModuleNotFoundError" in error


# ------------------------------------------------------------------- network
@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "QWEN3VL_OFFLINE"])
def test_offline_mode_skips_modelscope_without_a_lookup(no_network, variable):
    found = env_check.check_network({variable: "1"})
    assert found.status == WARN and "离线" in found.value


@pytest.mark.parametrize(
    "reachable, detail, status", [(True, "HTTP 200，35 ms", OK), (False, "ConnectTimeout", WARN)]
)
def test_online_network_row_follows_the_probe(monkeypatch, reachable, detail, status):
    monkeypatch.setattr(env_check, "modelscope_reachable", lambda timeout=3.0, grace=1.0: (reachable, detail))
    found = env_check.check_network({})
    assert found.status == status and detail in found.value
    if status == WARN:
        assert "network_turbo" in found.fix


def test_probe_turns_a_connection_error_into_unreachable(monkeypatch):
    def refuse(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Failed to establish a new connection")

    monkeypatch.setattr(requests, "head", refuse)
    assert env_check.modelscope_reachable(timeout=1) == (False, "ConnectionError")


def test_probe_gives_up_on_a_hanging_request(monkeypatch):
    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(30)
        raise requests.exceptions.ConnectTimeout("released")

    monkeypatch.setattr(requests, "head", hang)
    try:
        reachable, detail = env_check.modelscope_reachable(timeout=0.05, grace=0)
    finally:
        release.set()
    assert not reachable and "没有响应" in detail


# --------------------------------------------------------------------- table
def test_table_aligns_columns_and_shows_fixes():
    rows = [
        CheckRow("Python", OK, "3.12.3"),
        CheckRow("GPU / 显存", WARN, "没有可用的 GPU", "有卡模式开机"),
        CheckRow("显存估算（默认预算）", FAIL, "12 GiB > 8 GiB", "调小预算"),
    ]
    lines = env_check.format_table(rows).splitlines()
    row_lines = [line for line in lines if line.startswith(STATUSES)][: len(rows)]
    value_starts = {
        env_check.display_width(line[: line.index(r.value)]) for line, r in zip(row_lines, rows, strict=True)
    }
    assert len(value_starts) == 1, lines
    assert sum("↳ 修复" in line for line in lines) == 2
    assert "❌ 1" in lines[-1]
    markdown = env_check.format_markdown(rows)
    assert markdown.count("\n") == 4 and "调小预算" in markdown


@pytest.mark.parametrize("text, width", [("abc", 3), ("中文", 4), ("✅", 2), ("⚠️", 2), ("❌", 2)])
def test_display_width_counts_wide_characters(text, width):
    assert env_check.display_width(text) == width
