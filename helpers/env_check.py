"""Check this machine before the tutorial: GPU, versions, video readers, disk, RAM, network.

    python -m helpers.env_check            # a ✅ / ⚠️ / ❌ table; exit code 1 when any ❌
    python -m helpers.env_check --model Qwen/Qwen3-VL-4B-Instruct

Notebook 00 calls :func:`run_checks` and shows the same rows. Facts about the
machine come from small functions (:func:`torch_info`, :func:`gpu_devices`,
:func:`driver_info`, :func:`memory_info`, :func:`modelscope_reachable`, ...)
so that tests can replace them. With ``HF_HUB_OFFLINE=1`` or
``QWEN3VL_OFFLINE=1`` nothing here touches the network, not even DNS.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import io
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from helpers.config import AUTODL_DATA_DISK, DEFAULT_MODEL, Settings, has_weights
from helpers.display import display_width, pad_to_width
from helpers.download import free_disk_bytes, offline_mode, required_free_bytes

OK, WARN, FAIL = "✅", "⚠️", "❌"
STATUSES = (OK, WARN, FAIL)

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO_ROOT / "requirements.txt"
AUTODL_FILE_STORAGE = Path("/root/autodl-fs")
NETWORK_TURBO = Path("/etc/network_turbo")
MODELSCOPE_URL = "https://www.modelscope.cn"

MIN_PYTHON = (3, 11)  # transformers 5 needs 3.11+
MIN_TORCH = "2.6"  # transformers 5 needs torch 2.6+
MIN_TRANSFORMERS = "4.57"  # first release with Qwen3-VL
GIB = 1024**3
RAM_FOR_4B = 16 * GIB  # loading the 4B bf16 weights comfortably
RAM_FOR_DEMO = 2 * GIB

FIX_NO_GPU = "AutoDL：关机后用“有卡模式”开机；没有 GPU 也能学：QWEN3VL_MODEL=demo 跑通全部 notebook"
FIX_PIP = "pip install -r requirements.txt"
SAME_AS_GPU = "同“GPU / 显存”一行"


@dataclass(frozen=True)
class CheckRow:
    """One line of the table: what was checked, how it went, what was seen, how to fix it."""

    name: str
    status: str  # OK, WARN or FAIL
    value: str
    fix: str = ""


# ------------------------------------------------------------ facts (fakeable)
@dataclass(frozen=True)
class TorchInfo:
    version: str | None  # None: torch cannot be imported
    torchvision: str | None
    cuda_build: str | None  # CUDA version torch was built for; None for a CPU-only build
    error: str = ""


@dataclass(frozen=True)
class GpuDevice:
    name: str
    total_bytes: int
    free_bytes: int | None
    capability: tuple[int, int]

    @property
    def bf16(self) -> bool:
        return self.capability >= (8, 0)  # Ampere (RTX 30xx, A100) and newer


@dataclass(frozen=True)
class DriverInfo:
    version: str
    cuda_version: str | None  # the newest CUDA this driver supports


def torch_info() -> TorchInfo:
    try:
        import torch
    except Exception as exc:  # ImportError, or a broken CUDA library
        return TorchInfo(None, None, None, f"{type(exc).__name__}: {exc}")
    try:
        import torchvision

        vision = torchvision.__version__
    except Exception:
        vision = None
    return TorchInfo(torch.__version__, vision, torch.version.cuda)


def gpu_devices() -> list[GpuDevice]:
    """The CUDA devices torch can use (empty without a GPU or with a CPU-only torch)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        devices = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            try:
                free, _ = torch.cuda.mem_get_info(i)
            except Exception:
                free = None
            devices.append(GpuDevice(props.name, props.total_memory, free, (props.major, props.minor)))
        return devices
    except Exception:
        return []


def driver_info() -> DriverInfo | None:
    """Driver version and its CUDA version from ``nvidia-smi`` (None when it is missing)."""
    try:
        out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=15).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    driver = re.search(r"Driver Version:\s*([\d.]+)", out)
    if not driver:
        return None
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", out)
    return DriverInfo(driver.group(1), cuda.group(1) if cuda else None)


def memory_info() -> tuple[int, int | None]:
    """(total, available) RAM in bytes; available is None where the OS does not say."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        total = int(fields["MemTotal"].split()[0]) * 1024
        return total, int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), None


def autodl_disks() -> dict[str, bool]:
    """Which AutoDL folders exist here (the data disk decides whether this is AutoDL)."""
    return {
        str(AUTODL_DATA_DISK): AUTODL_DATA_DISK.is_dir(),
        str(AUTODL_FILE_STORAGE): AUTODL_FILE_STORAGE.is_dir(),
        str(NETWORK_TURBO): NETWORK_TURBO.is_file(),
    }


def module_installed(module: str) -> bool:
    """True when ``module`` could be imported (found on the path; nothing is imported)."""
    return importlib.util.find_spec(module) is not None


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def pinned_versions(path: Path = REQUIREMENTS) -> dict[str, str]:
    """``name -> version`` for every ``name==version`` line of requirements.txt."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)", line)
        if match:
            pins[match.group(1)] = match.group(2)
    return pins


def pyav_roundtrip(frames: int = 4) -> int:
    """Encode a tiny clip in memory with PyAV and decode it again; return the frames read back."""
    import av
    import numpy as np

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(frames):
            image = np.full((64, 64, 3), i * 40, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    buffer.seek(0)
    with av.open(buffer) as container:
        return sum(1 for _ in container.decode(video=0))


def import_in_subprocess(module: str, timeout: float = 120) -> tuple[bool, str]:
    """Try ``import module`` in a fresh interpreter; return (ok, the error's last line).

    A separate process, because some readers damage the importing process
    (``import decord`` breaks transformers' PNG decoding) or crash it.
    """
    try:
        proc = subprocess.run(
            [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return False, f"import {module} took longer than {timeout:.0f} s"
    if proc.returncode == 0:
        return True, ""
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    return False, (lines[-1] if lines else f"exit code {proc.returncode}")[:160]


def modelscope_reachable(timeout: float = 3.0, grace: float = 1.0) -> tuple[bool, str]:
    """(reachable, detail) for an HTTPS request to ModelScope, never taking much longer than ``timeout``.

    The request runs in a daemon thread because a slow DNS lookup ignores
    socket timeouts; after ``timeout + grace`` seconds we stop waiting for it.
    """
    result: list[tuple[bool, str]] = []

    def probe() -> None:
        import requests

        start = time.perf_counter()
        try:
            response = requests.head(MODELSCOPE_URL, timeout=timeout, allow_redirects=False)
        except Exception as exc:
            result.append((False, type(exc).__name__))
            return
        ms = (time.perf_counter() - start) * 1000
        result.append((response.status_code < 500, f"HTTP {response.status_code}，{ms:.0f} ms"))

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + grace)
    return result[0] if result else (False, f"{timeout + grace:g} 秒内没有响应")


# ------------------------------------------------------------------- the checks
def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text.split("+")[0])[:3])


def check_python() -> CheckRow:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] >= MIN_PYTHON:
        return CheckRow("Python", OK, version)
    return CheckRow(
        "Python",
        FAIL,
        f"{version}（transformers 5 需要 ≥ 3.11）",
        "换用 Python 3.11+（AutoDL 镜像自带 3.12）",
    )


def check_torch(info: TorchInfo) -> CheckRow:
    if info.version is None:
        return CheckRow(
            "PyTorch",
            FAIL,
            f"无法导入（{info.error[:100]}）",
            "AutoDL：选 PyTorch 2.8 镜像；裸机：make setup（安装 torch 2.14.1）",
        )
    value = f"torch {info.version} / torchvision {info.torchvision or '未安装'}"
    if _version_tuple(info.version) < _version_tuple(MIN_TORCH):
        return CheckRow("PyTorch", FAIL, f"{value}（transformers 5 需要 torch ≥ {MIN_TORCH}）", "换用新镜像")
    if info.torchvision is None:
        return CheckRow("PyTorch", FAIL, value, "pip install torchvision（与 torch 配套的版本）")
    if _version_tuple(info.version)[:2] == (2, 9):
        # pytorch/pytorch#166122: a Conv3d slowdown that hits Qwen3-VL's patch embedding
        return CheckRow(
            "PyTorch",
            WARN,
            f"{value}（torch 2.9.x 的 Conv3d 性能回退会让视觉编码非常慢，pytorch#166122）",
            "换用 torch 2.8（AutoDL 镜像自带）或 2.10 及更新版本",
        )
    return CheckRow("PyTorch", OK, value)


def check_cuda(
    info: TorchInfo, devices: list[GpuDevice], driver: DriverInfo | None, gpu_needed: bool = True
) -> CheckRow:
    """``gpu_needed=False`` (demo mode) turns a broken GPU stack into a warning: the CPU path still works."""
    if devices:
        return CheckRow("CUDA", OK, f"可用，PyTorch 编译于 CUDA {info.cuda_build}")
    if info.cuda_build is None and driver is not None:
        return CheckRow(
            "CUDA",
            FAIL if gpu_needed else WARN,
            "有 NVIDIA 驱动，但安装的是 CPU 版 PyTorch",
            "AutoDL：换回镜像自带的 PyTorch；或按 pytorch.org 安装 CUDA 版",
        )
    built = f"PyTorch 编译于 CUDA {info.cuda_build}" if info.cuda_build else "CPU 版 PyTorch"
    return CheckRow("CUDA", WARN, f"不可用（{built}，没有可用的 GPU）", SAME_AS_GPU)


def check_gpu(devices: list[GpuDevice]) -> CheckRow:
    if not devices:
        return CheckRow("GPU / 显存", WARN, "没有可用的 GPU（将在 CPU 上运行）", FIX_NO_GPU)
    first = devices[0]
    free = f"，空闲 {first.free_bytes / GIB:.1f} GiB" if first.free_bytes is not None else ""
    count = f" × {len(devices)}" if len(devices) > 1 else ""
    return CheckRow("GPU / 显存", OK, f"{first.name}{count}，显存 {first.total_bytes / GIB:.1f} GiB{free}")


def check_driver(
    info: TorchInfo, devices: list[GpuDevice], driver: DriverInfo | None, gpu_needed: bool = True
) -> CheckRow:
    if driver is None:
        if devices:
            return CheckRow(
                "NVIDIA 驱动", WARN, "找不到 nvidia-smi，无法读取驱动版本", "通常不影响使用；可忽略"
            )
        return CheckRow("NVIDIA 驱动", WARN, "找不到 nvidia-smi（没有 NVIDIA 驱动）", SAME_AS_GPU)
    value = f"{driver.version}（支持到 CUDA {driver.cuda_version or '?'}）"
    if driver.cuda_version and info.cuda_build:
        have, need = _version_tuple(driver.cuda_version), _version_tuple(info.cuda_build)
        fix = f"驱动太旧：换用 CUDA ≤ {driver.cuda_version} 的 PyTorch（AutoDL：选匹配的镜像），或升级驱动"
        if have[:1] < need[:1]:
            status = FAIL if gpu_needed else WARN
            return CheckRow("NVIDIA 驱动", status, f"{value}，PyTorch 需要 CUDA {info.cuda_build}", fix)
        if have[:2] < need[:2]:
            return CheckRow("NVIDIA 驱动", WARN, f"{value}，PyTorch 编译于 CUDA {info.cuda_build}", fix)
    return CheckRow("NVIDIA 驱动", OK, value)


def check_bf16(devices: list[GpuDevice]) -> CheckRow:
    if not devices:
        return CheckRow("bf16", WARN, "没有 GPU：CPU 上用 float32", SAME_AS_GPU)
    cap = ".".join(map(str, devices[0].capability))
    if devices[0].bf16:
        return CheckRow("bf16", OK, f"支持（计算能力 {cap}）")
    return CheckRow("bf16", WARN, f"不支持（计算能力 {cap}，早于 Ampere）", "QWEN3VL_DTYPE=float16")


def check_fp8(settings: Settings, devices: list[GpuDevice]) -> CheckRow:
    """Whether this GPU computes in FP8 (compute capability >= 8.9: Ada / Hopper), for the chosen id.

    Below 8.9 an FP8 checkpoint still runs: vLLM (0.32: FP8 from capability 7.5) keeps the
    weights in FP8 and computes in 16 bits (Marlin kernels), so memory is saved but not FP8
    compute; transformers dequantizes them to bf16 (nothing saved). Below 7.5 neither helps.
    """
    from helpers.models import fp8_supported, model_spec

    spec = model_spec(settings.model)
    chosen = spec is not None and spec.fp8
    bf16_id = spec.model_id.removesuffix("-FP8") if chosen else ""
    if not devices:
        value = (
            "没有 GPU：FP8 模型要在 GPU 上才省显存（计算能力 ≥ 8.9 时还能用 FP8 计算：RTX 4090、L4、H100）"
        )
        return CheckRow("FP8", WARN if chosen else OK, value, f"换 BF16 版：{bf16_id}" if chosen else "")
    capability = devices[0].capability
    cap = ".".join(map(str, capability))
    if fp8_supported(capability):
        return CheckRow(
            "FP8",
            OK,
            f"支持 FP8 计算（计算能力 {cap} ≥ 8.9）：-FP8 模型权重约为 BF16 的 60%，"
            "vLLM 和 transformers 都能跑",
        )
    if tuple(capability) >= (7, 5):
        value = (
            f"没有 FP8 计算单元（计算能力 {cap} < 8.9）：vLLM 仍能以 FP8 存权重（省显存，不提速），"
            "transformers 会解压回 bf16"
        )
        fix = f"用 vLLM（notebook 07）跑 {settings.model}，或换 BF16 版：QWEN3VL_MODEL={bf16_id}"
        return CheckRow("FP8", WARN if chosen else OK, value, fix if chosen else "")
    value = f"不支持（计算能力 {cap} < 7.5）"
    if not chosen:
        return CheckRow("FP8", OK, value + "：用 BF16 / float16 模型（现在的选择就是）")
    return CheckRow(
        "FP8", FAIL, value + f"：{settings.model} 在这张卡上跑不起来", f"换 BF16 版：QWEN3VL_MODEL={bf16_id}"
    )


def check_ram(settings: Settings) -> CheckRow:
    total, available = memory_info()
    need = RAM_FOR_DEMO if settings.is_demo else RAM_FOR_4B
    value = f"共 {total / GIB:.1f} GiB" + (
        f"，可用 {available / GIB:.1f} GiB" if available is not None else ""
    )
    if total < need:
        return CheckRow(
            "内存", WARN, f"{value}（建议 ≥ {need / GIB:.0f} GiB）", "关闭其他程序，或选内存更大的实例"
        )
    return CheckRow("内存", OK, value)


def check_transformers(pins: Mapping[str, str]) -> CheckRow:
    version = package_version("transformers")
    pin = pins.get("transformers")
    fix = f'pip install "transformers=={pin or "5.24.0"}"（带引号：> 和 = 在 shell 里有特殊含义）'
    if version is None:
        return CheckRow("transformers", FAIL, "未安装", fix)
    supported = module_installed("transformers.models.qwen3_vl")
    if not supported or _version_tuple(version) < _version_tuple(MIN_TRANSFORMERS):
        return CheckRow("transformers", FAIL, f"{version}：不支持 Qwen3-VL（需要 ≥ {MIN_TRANSFORMERS}）", fix)
    if pin and version != pin:
        return CheckRow("transformers", WARN, f"{version}（含 Qwen3-VL；requirements.txt 固定 {pin}）", fix)
    return CheckRow("transformers", OK, f"{version}（含 Qwen3-VL）")


def check_pin(name: str, pins: Mapping[str, str]) -> CheckRow:
    version, pin = package_version(name), pins.get(name)
    fix = f"pip install {name}=={pin}" if pin else f"pip install {name}"
    if version is None:
        return CheckRow(name, FAIL, "未安装", fix)
    if pin and version != pin:
        return CheckRow(name, WARN, f"{version}（requirements.txt 固定 {pin}）", fix)
    return CheckRow(name, OK, version)


def check_other_pins(pins: Mapping[str, str], shown: set[str]) -> CheckRow:
    name = "其他依赖"
    if not pins:
        return CheckRow(name, WARN, f"找不到 {REQUIREMENTS}", "在仓库根目录运行，或 pip install -e .")
    rest = {k: v for k, v in pins.items() if k not in shown}
    missing = [k for k in rest if package_version(k) is None]
    differ = [
        f"{k} {package_version(k)}≠{v}"
        for k, v in rest.items()
        if k not in missing and package_version(k) != v
    ]
    if missing:
        return CheckRow(name, FAIL, "未安装：" + "、".join(missing), FIX_PIP)
    if differ:
        return CheckRow(name, WARN, "版本不同：" + "、".join(differ), FIX_PIP)
    return CheckRow(name, OK, f"{len(rest)} 个包与 requirements.txt 一致")


def check_pyav() -> CheckRow:
    name = "视频读取：PyAV"
    version = package_version("av")
    if version is None:
        return CheckRow(name, FAIL, "未安装（本教程用它解码视频）", FIX_PIP)
    try:
        frames = pyav_roundtrip()
    except Exception as exc:
        return CheckRow(name, FAIL, f"av {version} 无法编解码：{type(exc).__name__}: {exc}"[:160], FIX_PIP)
    return CheckRow(name, OK, f"av {version}：内存中编码再解码 {frames} 帧成功（wheel 自带 FFmpeg）")


def check_torchcodec() -> CheckRow:
    name = "视频读取：torchcodec"
    if not module_installed("torchcodec"):
        return CheckRow(name, OK, "未安装（不需要：本教程用 PyAV）")
    ok, error = import_in_subprocess("torchcodec.decoders")
    if ok:
        return CheckRow(name, OK, f"torchcodec {package_version('torchcodec')} 可以加载（本教程用 PyAV）")
    return CheckRow(
        name,
        WARN,
        f"已安装但无法加载（它需要系统 FFmpeg 库）：{error}",
        "qwen-vl-utils 会优先选它：pip uninstall -y torchcodec，或 apt-get install -y ffmpeg",
    )


def check_decord() -> CheckRow:
    name = "视频读取：decord"
    if not module_installed("decord"):
        return CheckRow(name, OK, "未安装（不需要：本教程用 PyAV）")
    ok, error = import_in_subprocess("decord")
    if ok:
        return CheckRow(
            name,
            WARN,
            "已安装：import decord 后 transformers 无法解码 PNG（它自带的 zlib 冲突）",
            "pip uninstall -y decord",
        )
    return CheckRow(name, WARN, f"已安装但无法加载：{error}", "pip uninstall -y decord")


def check_flash_attn() -> CheckRow:
    name = "flash-attn（可选）"
    if not module_installed("flash_attn"):
        return CheckRow(name, OK, "未安装（不需要：默认用 PyTorch SDPA 注意力）")
    ok, error = import_in_subprocess("flash_attn")
    if ok:
        return CheckRow(name, OK, f"{package_version('flash-attn') or '已安装'}，可以加载")
    return CheckRow(
        name, WARN, f"已安装但无法加载：{error}", "pip uninstall -y flash-attn（默认 SDPA 不需要它）"
    )


def check_autodl(settings: Settings, disks: Mapping[str, bool]) -> CheckRow:
    name = "AutoDL"
    if not disks.get(str(AUTODL_DATA_DISK)):
        return CheckRow(name, OK, "不是 AutoDL（没有 /root/autodl-tmp）")
    found = [path for path, exists in disks.items() if exists]
    value = "是：" + "、".join(found)
    data_disk = AUTODL_DATA_DISK.resolve()
    root = settings.resolved_model_root.expanduser().absolute()
    if not settings.is_demo and data_disk not in (root, *root.parents):
        return CheckRow(
            name,
            WARN,
            f"{value}；模型目录 {root} 不在数据盘上",
            f"export QWEN3VL_MODEL_ROOT={AUTODL_DATA_DISK}/models（数据盘是本地盘，读写快）",
        )
    return CheckRow(name, OK, value)


def check_disk(settings: Settings) -> CheckRow:
    name = "磁盘空间"
    root = settings.resolved_model_root
    free = free_disk_bytes(root)
    if settings.is_demo:
        model, folder = DEFAULT_MODEL, root / DEFAULT_MODEL
        prefix = "演示模式现在不需要下载；以后下载 4B 时："
    else:
        model, folder = settings.model, settings.model_dir()
        prefix = ""
    if not settings.is_demo and has_weights(folder):
        return CheckRow(name, OK, f"{root} 剩余 {free / GIB:.1f} GiB（模型已在磁盘上）")
    need = required_free_bytes(model, folder)
    if need is None:
        return CheckRow(
            name, WARN, f"{root} 剩余 {free / GIB:.1f} GiB（不知道 {model} 有多大）", "确认空间足够"
        )
    value = f"{prefix}{root} 剩余 {free / GIB:.1f} GiB，需要约 {need / GIB:.1f} GiB（含余量）"
    if free >= need:
        return CheckRow(name, OK, value)
    fix = f"清理空间，或 QWEN3VL_MODEL_ROOT 指向更大的盘（AutoDL：{AUTODL_DATA_DISK}，可在控制台扩容）"
    return CheckRow(name, WARN if settings.is_demo else FAIL, value, fix)


def check_weights(settings: Settings) -> CheckRow:
    name = "模型权重"
    if settings.is_demo:
        from helpers.demo_model import demo_checkpoint_dir

        built = (demo_checkpoint_dir(settings.model) / "config.json").is_file()
        state = "已生成" if built else "首次使用时自动生成（约 2 秒）"
        return CheckRow(name, OK, f"演示模型 demo：{state}")
    folder = settings.model_dir()
    if has_weights(folder):
        return CheckRow(name, OK, f"{folder}（完整校验：python -m helpers.download --verify-only）")
    return CheckRow(
        name,
        WARN,
        f"还没有下载：{folder}",
        f"python -m helpers.download --model {settings.model}（或运行 notebooks/01_download_model.ipynb）",
    )


def check_network(environ: Mapping[str, str]) -> CheckRow:
    name = "ModelScope 网络"
    if offline_mode(environ):
        return CheckRow(
            name,
            WARN,
            "未检查：离线模式（HF_HUB_OFFLINE / QWEN3VL_OFFLINE 已设置）",
            "要下载模型时，在没有这两个变量的终端里检查：unset HF_HUB_OFFLINE QWEN3VL_OFFLINE",
        )
    reachable, detail = modelscope_reachable()
    if reachable:
        return CheckRow(name, OK, f"{MODELSCOPE_URL} 可以访问（{detail}）")
    return CheckRow(
        name,
        WARN,
        f"{MODELSCOPE_URL} 无法访问（{detail}）",
        "检查网络；AutoDL：source /etc/network_turbo；或改用 --source huggingface + HF_ENDPOINT 镜像",
    )


def check_fit(settings: Settings, devices: list[GpuDevice]) -> CheckRow:
    from helpers.costs import format_bytes, vram_estimate

    name = "显存估算（默认预算）"
    # The demo stands in for the 4B: the table shows what the real model will need.
    planned = settings.replace(model=DEFAULT_MODEL) if settings.is_demo else settings
    chosen = vram_estimate(planned, "largest_media", bytes_per_value=2)  # bf16, as the text says
    shape, tokens, estimate = chosen.shape, chosen.tokens, chosen.memory
    prefix = {
        "downloaded": "",
        "published": "还没有下载，按公开配置估算：",
        "assumed": f"不认识 {settings.model} 的大小，按 4B 估算：",
    }[chosen.source]
    if settings.is_demo:
        prefix = "演示模式，按 4B 计算："
    named = shape.name if "FP8" in shape.name.upper() else f"{shape.name} bf16"  # FP8 ids say so themselves
    need = f"{prefix}{named} + 最大请求 {tokens} token 需要约 {format_bytes(estimate.total)}"
    too_big_for_4090 = not estimate.fits(24 * GIB)
    if too_big_for_4090:
        need += "；一张 24 GB 的 RTX 4090 放不下"
    if not devices:
        fix = f"跑 {shape.name} 需要一张 GPU（AutoDL 的 RTX 4090 24 GB 够用）"
        if too_big_for_4090:
            fix = "这个模型需要多张 GPU 或显存更大的卡（vLLM 张量并行，见 notebook 07），或换 4B / 8B"
        return CheckRow(
            name,
            WARN,
            f"{need}；本机没有 GPU",
            fix + ("；演示模型在 CPU 上就能跑" if settings.is_demo else "；没有 GPU 时用 QWEN3VL_MODEL=demo"),
        )
    gpu = max(d.total_bytes for d in devices)
    if estimate.fits(gpu):
        return CheckRow(name, OK, f"{need} ≤ 显存 {format_bytes(gpu)}")
    fix = (
        "调小 QWEN3VL_IMAGE_MAX_PIXELS / QWEN3VL_VIDEO_MAX_FRAMES / QWEN3VL_MAX_NEW_TOKENS_LIMIT，"
        "或换显存更大的 GPU"
    )
    if estimate.weights + estimate.overhead > gpu:
        fix = "光是权重就放不下：换小一号的模型（4B / 8B），或用多张 GPU（vLLM 张量并行，见 notebook 07）"
    return CheckRow(name, WARN if settings.is_demo else FAIL, f"{need} > 显存 {format_bytes(gpu)}", fix)


def run_checks(settings: Settings | None = None, environ: Mapping[str, str] | None = None) -> list[CheckRow]:
    """Every check, in the order of the table. A check that itself crashes becomes a ⚠️ row."""
    settings = settings or Settings.from_env()
    environ = os.environ if environ is None else environ
    info, devices, driver = torch_info(), gpu_devices(), driver_info()
    gpu_needed = not settings.is_demo  # the demo model runs on a CPU
    try:
        pins = pinned_versions()
    except OSError:
        pins = {}
    shown = {"transformers", "qwen-vl-utils", "accelerate", "av"}
    checks: list[tuple[str, Callable[[], CheckRow]]] = [
        ("Python", check_python),
        ("PyTorch", lambda: check_torch(info)),
        ("GPU / 显存", lambda: check_gpu(devices)),
        ("CUDA", lambda: check_cuda(info, devices, driver, gpu_needed)),
        ("NVIDIA 驱动", lambda: check_driver(info, devices, driver, gpu_needed)),
        ("bf16", lambda: check_bf16(devices)),
        ("FP8", lambda: check_fp8(settings, devices)),
        ("内存", lambda: check_ram(settings)),
        ("transformers", lambda: check_transformers(pins)),
        ("qwen-vl-utils", lambda: check_pin("qwen-vl-utils", pins)),
        ("accelerate", lambda: check_pin("accelerate", pins)),
        ("av", lambda: check_pin("av", pins)),
        ("其他依赖", lambda: check_other_pins(pins, shown)),
        ("视频读取：PyAV", check_pyav),
        ("视频读取：torchcodec", check_torchcodec),
        ("视频读取：decord", check_decord),
        ("flash-attn（可选）", check_flash_attn),
        ("AutoDL", lambda: check_autodl(settings, autodl_disks())),
        ("磁盘空间", lambda: check_disk(settings)),
        ("模型权重", lambda: check_weights(settings)),
        ("ModelScope 网络", lambda: check_network(environ)),
        ("显存估算（默认预算）", lambda: check_fit(settings, devices)),
    ]
    rows = []
    for name, check in checks:
        try:
            rows.append(check())
        except Exception as exc:
            rows.append(
                CheckRow(name, WARN, f"检查本身出错：{type(exc).__name__}: {exc}"[:160], "请报告这个问题")
            )
    return rows


# ------------------------------------------------------------------ the table
def format_table(rows: list[CheckRow]) -> str:
    """The rows as an aligned text table, each fix on its own line under its row."""
    name_width = max(display_width(r.name) for r in rows)
    head = f"{pad_to_width('状态', 4)}  {pad_to_width('检查项', name_width)}  结果"
    lines = [head, "─" * max(display_width(head), 60)]
    indent = " " * (4 + 2 + name_width + 2)
    for row in rows:
        lines.append(f"{pad_to_width(row.status, 4)}  {pad_to_width(row.name, name_width)}  {row.value}")
        if row.fix and row.status != OK:
            lines.append(f"{indent}↳ 修复：{row.fix}")
    lines.append("─" * max(display_width(head), 60))
    lines.append(summary(rows))
    return "\n".join(lines)


def format_markdown(rows: list[CheckRow]) -> str:
    """The rows as a Markdown table (notebook 00 renders it)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| 状态 | 检查项 | 结果 | 如何修复 |", "|---|---|---|---|"]
    lines += [
        f"| {r.status} | {cell(r.name)} | {cell(r.value)} | {cell(r.fix) if r.status != OK else ''} |"
        for r in rows
    ]
    return "\n".join(lines)


def summary(rows: list[CheckRow]) -> str:
    counts = {s: sum(r.status == s for r in rows) for s in STATUSES}
    verdict = (
        "有 ❌：按“修复”处理后重新运行 python -m helpers.env_check"
        if counts[FAIL]
        else "没有 ❌，可以继续（⚠️ 是提醒，看看是否与你有关）"
    )
    return f"{OK} {counts[OK]}   {WARN} {counts[WARN]}   {FAIL} {counts[FAIL]}   —   {verdict}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="check for this model instead of QWEN3VL_MODEL")
    args = parser.parse_args(argv)
    settings = Settings.from_env(**({"model": args.model} if args.model else {}))
    print(f"环境检查（模型：{settings.model}）\n")
    rows = run_checks(settings)
    print(format_table(rows))
    return 1 if any(r.status == FAIL for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
