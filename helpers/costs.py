"""What an image or a video costs: visual tokens, KV-cache memory, and whether it fits the GPU.

The engine resizes every picture and frame to exactly the size these functions
compute, so the numbers shown in the notebooks are the numbers the model sees.

Qwen3-VL cuts pictures into 16x16 patches and merges 2x2 patches into one
token, so **one visual token covers 32x32 pixels**. Videos additionally merge
2 consecutive frames (temporal patch 2), so two frames cost as much as one
picture of the same size.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from qwen_vl_utils import smart_resize

PATCH_SIZE = 16
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
FACTOR = PATCH_SIZE * MERGE_SIZE  # 32: side of the pixel square behind one visual token
PIXELS_PER_TOKEN = FACTOR * FACTOR
GIB = 1024**3
# Besides weights and KV cache: CUDA context, vision-encoder activations,
# logits and allocator slack. A deliberately round, generous figure.
RUNTIME_OVERHEAD_BYTES = int(2.0 * GIB)


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a model that decide its memory use."""

    name: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    num_parameters: int
    bytes_per_value: int = 2  # bf16
    # Quantised checkpoints (FP8): their weights' bytes, which bytes_per_value (the KV cache's) does not give.
    fixed_weight_bytes: int | None = None

    @property
    def kv_bytes_per_token(self) -> int:
        # keys and values, for every layer and KV head
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.bytes_per_value

    @property
    def weight_bytes(self) -> int:
        if self.fixed_weight_bytes is not None:
            return self.fixed_weight_bytes
        return self.num_parameters * self.bytes_per_value

    def kv_cache_bytes(self, tokens: int) -> int:
        return tokens * self.kv_bytes_per_token

    @classmethod
    def from_pretrained(cls, folder: str | Path, bytes_per_value: int = 2) -> ModelShape:
        """Read the shape from a checkpoint folder (config.json + safetensors sizes)."""
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        text = config.get("text_config", config)
        heads = text["num_attention_heads"]
        head_dim = text.get("head_dim") or text["hidden_size"] // heads
        stored_bytes = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        stored_dtype = str(text.get("dtype") or config.get("dtype") or config.get("torch_dtype") or "float32")
        stored_width = 4 if "32" in stored_dtype else 2
        # Hybrid models (Qwen3.5) keep a KV cache only in their full-attention layers.
        layer_types = text.get("layer_types")
        layers = (
            sum(kind == "full_attention" for kind in layer_types)
            if layer_types
            else text["num_hidden_layers"]
        )
        return cls(
            name=folder.name,
            num_layers=layers,
            num_kv_heads=text.get("num_key_value_heads", heads),
            head_dim=head_dim,
            num_parameters=stored_bytes // stored_width,
            bytes_per_value=bytes_per_value,
        )


# The published configuration of Qwen3-VL-4B-Instruct (36 layers, 8 KV heads of
# 128; about 4.44 B parameters, ~8.9 GB in bf16), so notebooks can show its
# arithmetic in demo mode.
QWEN3_VL_4B = ModelShape(
    name="Qwen3-VL-4B-Instruct", num_layers=36, num_kv_heads=8, head_dim=128, num_parameters=4_440_000_000
)

# The other Qwen3-VL sizes, from their published configs (text layers, KV heads,
# head_dim; parameters rounded), keyed by the size in the model id. The memory
# estimate of env_check follows the chosen model id through this table, so
# "what if I pick the 8B" has an honest answer before anything is downloaded.
MODEL_SHAPES: dict[str, ModelShape] = {
    "2B": ModelShape(
        "Qwen3-VL-2B", num_layers=28, num_kv_heads=8, head_dim=128, num_parameters=2_130_000_000
    ),
    "4B": QWEN3_VL_4B,
    "8B": ModelShape(
        "Qwen3-VL-8B", num_layers=36, num_kv_heads=8, head_dim=128, num_parameters=8_770_000_000
    ),
    # Mixture of experts: all 30 B parameters sit in memory although ~3 B work per token.
    "30B-A3B": ModelShape(
        "Qwen3-VL-30B-A3B", num_layers=48, num_kv_heads=4, head_dim=128, num_parameters=31_070_000_000
    ),
    "32B": ModelShape(
        "Qwen3-VL-32B", num_layers=64, num_kv_heads=8, head_dim=128, num_parameters=33_400_000_000
    ),
    "235B-A22B": ModelShape(
        "Qwen3-VL-235B-A22B", num_layers=94, num_kv_heads=4, head_dim=128, num_parameters=236_000_000_000
    ),
}


def shape_for_model(model_id: str) -> ModelShape | None:
    """The shape of a model id ("Qwen/Qwen3-VL-8B-Instruct" -> the 8B row), or None.

    Ids of the registry (:mod:`helpers.models`: 2B/4B/8B x Instruct/Thinking x
    BF16/FP8, Qwen3.5-4B) come from there, FP8 with their smaller weights; the
    larger Qwen3-VL sizes from :data:`MODEL_SHAPES`. Ids that name no size we know
    (a local folder, another model family) and other quantisations (AWQ, GPTQ,
    GGUF, ...) give None.
    """
    from helpers.models import QWEN3_VL, model_spec

    spec = model_spec(model_id)
    if spec is not None and not spec.demo:
        if spec.family == QWEN3_VL and not spec.fp8:
            return MODEL_SHAPES[spec.size]
        s = spec.shape
        return ModelShape(
            spec.name, s.kv_layers, s.kv_heads, s.head_dim, s.parameters, fixed_weight_bytes=spec.weight_bytes
        )
    name = model_id.rstrip("/").rsplit("/", 1)[-1].upper()
    if any(tag in name for tag in ("FP8", "AWQ", "GPTQ", "INT4", "INT8", "GGUF")):
        return None
    match = re.search(r"QWEN3-VL-(\d+B(?:-A\d+B)?)(?![A-Z0-9])", name)
    return MODEL_SHAPES.get(match.group(1)) if match else None


@dataclass(frozen=True)
class ImageCost:
    width: int  # size handed to the model
    height: int
    tokens: int


@dataclass(frozen=True)
class VideoCost:
    frames: int  # frames sampled (a multiple of 2)
    sample_fps: float  # frames per second actually sampled
    width: int  # per-frame size handed to the model
    height: int
    tokens: int


def image_cost(width: int, height: int, min_pixels: int, max_pixels: int) -> ImageCost:
    """The size a ``width`` x ``height`` picture is resized to, and its visual tokens."""
    new_h, new_w = budget_resize(width, height, min_pixels, max_pixels)
    return ImageCost(width=new_w, height=new_h, tokens=new_w * new_h // PIXELS_PER_TOKEN)


def budget_resize(width: int, height: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) in multiples of 32 with the aspect ratio kept and the area within the budget."""
    new_h, new_w = smart_resize(height, width, factor=FACTOR, min_pixels=min_pixels, max_pixels=max_pixels)
    if new_h * new_w > max_pixels:
        # Scaling *up* to min_pixels rounds up and can overshoot a max that is
        # close to it; the maximum wins.
        new_h, new_w = smart_resize(
            height, width, factor=FACTOR, min_pixels=PIXELS_PER_TOKEN, max_pixels=max_pixels
        )
    return new_h, new_w


def plan_frames(duration: float, fps: float, max_frames: int) -> tuple[int, float]:
    """How many frames to sample from ``duration`` seconds at ``fps``, capped at ``max_frames``.

    Returns ``(frames, sample_fps)``; frames is even (the model merges frame pairs)
    and at least 2. When the cap bites, frames are spread evenly over the clip
    and ``sample_fps`` drops accordingly.
    """
    wanted = max(1, math.floor(duration * fps + 1e-6))
    cap = max(TEMPORAL_PATCH_SIZE, max_frames - max_frames % TEMPORAL_PATCH_SIZE)
    frames = min(wanted, cap)
    frames = max(TEMPORAL_PATCH_SIZE, frames + frames % TEMPORAL_PATCH_SIZE)
    frames = min(frames, cap)
    sample_fps = fps if frames >= wanted else frames / duration if duration > 0 else fps
    return frames, sample_fps


def video_cost(
    duration: float,
    width: int,
    height: int,
    fps: float,
    min_pixels: int,
    max_pixels: int,
    max_frames: int,
) -> VideoCost:
    """Frames, per-frame size and visual tokens of a clip under the given budgets."""
    frames, sample_fps = plan_frames(duration, fps, max_frames)
    new_h, new_w = budget_resize(width, height, min_pixels, max_pixels)
    tokens = (frames // TEMPORAL_PATCH_SIZE) * (new_w * new_h // PIXELS_PER_TOKEN)
    return VideoCost(frames=frames, sample_fps=sample_fps, width=new_w, height=new_h, tokens=tokens)


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    kv_cache: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead

    def fits(self, gpu_bytes: int) -> bool:
        return self.total <= gpu_bytes

    def describe(self) -> str:
        return (
            f"权重 {self.weights / GIB:.2f} GiB + KV cache {self.kv_cache / GIB:.2f} GiB"
            f" + 运行时余量 {self.overhead / GIB:.2f} GiB = {self.total / GIB:.2f} GiB"
        )


def memory_estimate(shape: ModelShape, context_tokens: int) -> MemoryEstimate:
    """GPU memory for the weights plus one request of ``context_tokens`` (prompt + answer)."""
    return MemoryEstimate(
        weights=shape.weight_bytes,
        kv_cache=shape.kv_cache_bytes(context_tokens),
        overhead=RUNTIME_OVERHEAD_BYTES,
    )


def max_request_tokens(settings, prompt_text_tokens: int = 1024) -> int:
    """Tokens in the largest request the settings allow: every image and video at full budget."""
    image_tokens = settings.max_images_per_request * (settings.image_max_pixels // PIXELS_PER_TOKEN)
    frames = settings.video_max_frames - settings.video_max_frames % TEMPORAL_PATCH_SIZE
    video_tokens = (
        settings.max_videos_per_request
        * (frames // TEMPORAL_PATCH_SIZE)
        * (settings.video_max_pixels // PIXELS_PER_TOKEN)
    )
    return image_tokens + video_tokens + prompt_text_tokens + settings.max_new_tokens_limit


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


# ------------------------------------------------------------ free GPU memory
class NotEnoughGPUMemory(RuntimeError):
    """The GPU has less free memory than the model and one maximal request need."""


class Reading(tuple):
    """(free, total) bytes of one GPU, plus where they come from.

    ``simulated`` is the simulated card's label (:mod:`helpers.simulated_gpu`), None for a
    real one; ``holders`` says what holds the memory, where that is known.
    """

    simulated: str | None
    holders: tuple[str, ...]

    def __new__(cls, free: int, total: int, simulated: str | None = None, holders: tuple[str, ...] = ()):
        reading = super().__new__(cls, (int(free), int(total)))
        reading.simulated = simulated
        reading.holders = tuple(holders)
        return reading


MemoryProbe = Callable[[], "tuple[int, int] | None"]


def device_index(device: int | str) -> int:
    """The CUDA device number of a setting: ``auto``/``cuda`` -> 0, ``cuda:1`` -> 1."""
    if isinstance(device, int):
        return device
    return int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0


def torch_probe(device: int | str = 0) -> tuple[int, int] | None:
    """(free, total) bytes of ``device`` from ``torch.cuda.mem_get_info``; None without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.mem_get_info(device_index(device))


def _nvidia_smi(*query: str) -> str:
    return subprocess.run(
        ["nvidia-smi", *query, "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout


def nvidia_smi_probe(
    device: int | str = 0,
    environ: dict[str, str] | None = None,
    query: Callable[..., str] = _nvidia_smi,
) -> tuple[int, int] | None:
    """(free, total) bytes of CUDA device ``device`` from ``nvidia-smi`` (no CUDA context); None without it.

    CUDA numbers the devices that ``CUDA_VISIBLE_DEVICES`` lists (indices or
    ``GPU-`` UUIDs), in that order; ``nvidia-smi`` numbers them all. Device N is
    the N-th visible one, matched by index or UUID (``query``: the nvidia-smi
    call, injectable for tests).
    """
    environ = os.environ if environ is None else environ
    n = device_index(device)
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    try:
        rows = [
            [field.strip() for field in line.split(",")]
            for line in query("--query-gpu=index,uuid,memory.free,memory.total").splitlines()
            if line.strip()
        ]
        if visible is None:
            wanted = rows[n][0]
        else:
            listed = [v.strip() for v in visible.split(",") if v.strip()]
            wanted = listed[n]  # IndexError: fewer visible devices than the setting asks for
        row = next(r for r in rows if wanted in (r[0], r[1]) or (len(wanted) > 6 and r[1].startswith(wanted)))
        free_mib, total_mib = int(row[2]), int(row[3])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError, StopIteration):
        return None
    return free_mib * 1024**2, total_mib * 1024**2


def gpu_count(environ: dict[str, str] | None = None, query: Callable[..., str] = _nvidia_smi) -> int:
    """How many GPUs CUDA programs here can use: 1 on the simulated card, else nvidia-smi's count.

    ``CUDA_VISIBLE_DEVICES`` limits the count (empty or ``-1``: none).
    """
    if simulated_probe() is not None:
        return 1
    environ = os.environ if environ is None else environ
    try:
        rows = [line for line in query("--query-gpu=index").splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        return 0
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return len(rows)
    return min(len(rows), len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"]))


def simulated_probe() -> Reading | None:
    """The simulated card's (free, total) and holders (helpers.simulated_gpu); None when not simulating."""
    from helpers import simulated_gpu

    card = simulated_gpu.card()
    if card is None:
        return None
    free, total, holders = simulated_gpu.reading(card)
    return Reading(free, total, card.label, tuple(h.describe() for h in holders))


def default_probe(settings, use_torch: bool = True) -> MemoryProbe:
    """The probe for ``settings.device``: the simulated card when one is set, else CUDA or nvidia-smi.

    ``use_torch=False`` asks ``nvidia-smi`` (a notebook kernel that starts a server
    should not create a CUDA context of its own just to look).
    """

    def probe() -> tuple[int, int] | None:
        simulated = simulated_probe()
        if simulated is not None:
            return simulated
        if settings.device == "cpu":
            return None
        return torch_probe(settings.device) if use_torch else nvidia_smi_probe(settings.device)

    return probe


@dataclass(frozen=True)
class GpuMemoryStatus:
    """Free GPU memory against what the configured model needs (bytes)."""

    model: str
    cuda: bool
    free: int = 0
    total: int = 0
    needed: int = 0
    estimate: MemoryEstimate | None = None
    simulated: str | None = None  # the simulated card's label; None on a real GPU
    holders: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.cuda or self.free >= self.needed

    @property
    def card(self) -> str:
        return self.simulated or "GPU"

    def describe(self) -> str:
        if not self.cuda:
            return "没有可用的 GPU（CPU 模式）：不检查显存"
        mark = "✅" if self.ok else "❌"
        text = (
            f"{mark} {self.card} 空闲显存 {self.free / GIB:.1f} / {self.total / GIB:.1f} GiB，"
            f"{self.model} 需要约 {self.needed / GIB:.1f} GiB（{self.estimate.describe()}）"
        )
        if self.simulated:
            held = "；".join(self.holders) or "无"
            text += f"\n   （{self.simulated} 是模拟的卡，数字是估算，不是测量；占用者：{held}）"
        return text

    def problem(self) -> str:
        """What went wrong, the likely cause and the fix: Chinese first, then English (logs, exceptions)."""
        free, total, needed = self.free / GIB, self.total / GIB, self.needed / GIB
        est = self.estimate
        held = "；".join(self.holders)
        zh = (
            f"显存不够，加载不了 {self.model}：{self.card} 空闲 {free:.1f} / {total:.1f} GiB，"
            f"需要约 {needed:.1f} GiB（权重 {est.weights / GIB:.1f} + KV cache {est.kv_cache / GIB:.1f}"
            f" + 运行时 {est.overhead / GIB:.1f} GiB）。\n"
            + (f"  占着显存的：{held}\n" if held else "")
            + "  最可能的原因：别的进程占着 GPU——通常是加载过模型的另一个 Jupyter 内核（02/03/04），"
            "或者没停的服务。"
            "`nvidia-smi` 能列出它们的 PID。\n"
            "  解决：在 JupyterLab 里关掉那些内核（Kernel → Shut Down Kernel，或 Running 面板），停掉旧服务"
            "（`fuser -k 6006/tcp`），或 `kill <PID>`；也可以调小 QWEN3VL_MAX_MODEL_LEN 和图片/视频预算，"
            "或者用 QWEN3VL_MODEL=demo。\n"
        )
        en = (
            f"Not enough free GPU memory to load {self.model}: {free:.1f} GiB free of {total:.1f} GiB"
            + (f" ({self.simulated}, simulated)" if self.simulated else "")
            + f", about {needed:.1f} GiB needed (weights {est.weights / GIB:.1f} + KV cache "
            f"{est.kv_cache / GIB:.1f} + runtime {est.overhead / GIB:.1f} GiB).\n"
            + (f"  Held by: {held}\n" if held else "")
            + "  Likely cause: another process holds the GPU -- usually another Jupyter kernel that loaded "
            "the model (notebooks 02/03/04) or a server left running. `nvidia-smi` lists their PIDs.\n"
            "  Fix: in JupyterLab shut those kernels down (Kernel -> Shut Down Kernel, or the Running "
            "panel), stop old servers (`fuser -k 6006/tcp`), or `kill <PID>`; or lower "
            "QWEN3VL_MAX_MODEL_LEN / the image and video budgets; or use QWEN3VL_MODEL=demo."
        )
        return zh + en


def model_shape_and_source(settings, bytes_per_value: int | None = None) -> tuple[ModelShape, str]:
    """The configured model's shape and where it came from, by one rule for every estimate.

    ``"downloaded"``: its own config.json and weights; ``"published"``: its id's row
    of ``MODEL_SHAPES``; ``"assumed"``: an unknown id, estimated as the 4B.
    ``bytes_per_value`` defaults to 4 for ``dtype=float32``, else 2 (bf16/fp16).
    """
    if bytes_per_value is None:
        bytes_per_value = 4 if settings.dtype == "float32" else 2
    folder = settings.model_dir()
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return ModelShape.from_pretrained(folder, bytes_per_value), "downloaded"
    shape = shape_for_model(settings.model)
    source = "published" if shape is not None else "assumed"
    return dataclasses.replace(shape or QWEN3_VL_4B, bytes_per_value=bytes_per_value), source


def model_shape_for(settings, bytes_per_value: int | None = None) -> ModelShape:
    """The configured model's shape: its config.json when downloaded, else its id's row, else the 4B's."""
    return model_shape_and_source(settings, bytes_per_value)[0]


@dataclass(frozen=True)
class RequestEstimate:
    """GPU memory for the model plus one request: the shape used, where it came from, the tokens."""

    shape: ModelShape
    source: str  # downloaded / published / assumed (see model_shape_and_source)
    tokens: int
    memory: MemoryEstimate


# Which request an estimate is for: the longest one the server accepts (what a start must
# fit), or every image and video at full budget with text and answer (env_check's table).
ESTIMATE_REQUESTS = ("max_model_len", "largest_media")


def vram_estimate(
    settings, request: str = "max_model_len", bytes_per_value: int | None = None
) -> RequestEstimate:
    """GPU memory for the configured model and one ``request`` (see ``ESTIMATE_REQUESTS``)."""
    if request == "max_model_len":
        tokens = settings.max_model_len
    elif request == "largest_media":
        tokens = max_request_tokens(settings)
    else:
        raise ValueError(f"request must be one of {ESTIMATE_REQUESTS}, got {request!r}")
    shape, source = model_shape_and_source(settings, bytes_per_value)
    return RequestEstimate(shape, source, tokens, memory_estimate(shape, tokens))


def reservation_estimate(settings) -> MemoryEstimate:
    """What loading ``settings``' model takes on a real card, for the simulated one.

    The same estimate as the real check (:func:`memory_estimate` at ``max_model_len``),
    except that the demo model stands for the model being taught: the 4B in bf16,
    never the demo weights' few megabytes.
    """
    if settings.is_demo:
        return memory_estimate(QWEN3_VL_4B, settings.max_model_len)
    return vram_estimate(settings, "max_model_len").memory


def gpu_memory_status(settings, probe: MemoryProbe | None = None, use_torch: bool = True) -> GpuMemoryStatus:
    """Free GPU memory (``probe``: default :func:`default_probe`) against the model's estimate.

    The estimate is :func:`memory_estimate` for the model's weights and a request
    of ``settings.max_model_len`` tokens, the most one request may use; on the
    simulated card, :func:`reservation_estimate` (the taught model, also in demo mode).
    ``use_torch=False``: ask ``nvidia-smi`` (no CUDA context in a kernel that only starts a server).
    """
    reading = (probe or default_probe(settings, use_torch))()
    if reading is None:
        return GpuMemoryStatus(model=settings.model, cuda=False)
    free, total = reading[0], reading[1]
    simulated = getattr(reading, "simulated", None)
    if simulated:
        estimate = reservation_estimate(settings)
    else:
        estimate = vram_estimate(settings, "max_model_len").memory
    return GpuMemoryStatus(
        settings.model,
        True,
        int(free),
        int(total),
        estimate.total,
        estimate,
        simulated,
        tuple(getattr(reading, "holders", ())),
    )


def check_gpu_memory(settings, probe: MemoryProbe | None = None, use_torch: bool = True) -> GpuMemoryStatus:
    """:func:`gpu_memory_status`, raising :class:`NotEnoughGPUMemory` (with the fix) when it does not fit."""
    status = gpu_memory_status(settings, probe, use_torch)
    if not status.ok:
        raise NotEnoughGPUMemory(status.problem())
    return status


@dataclass(frozen=True)
class HeldMemory:
    """GPU memory a notebook kernel (and the servers it started) still holds."""

    bytes: int
    card: str | None  # "模拟的 …" on the simulated card, "GPU" on a real one, None without a GPU
    holders: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.card is None:
            return "没有 GPU：这个内核不占显存"
        mark = "✅" if self.bytes == 0 else "❌"
        text = f"{mark} 这个内核（和它启动的服务）在{self.card}上还占着 {self.bytes / GIB:.2f} GiB"
        if self.holders:
            text += "：" + "；".join(self.holders) + "。先 close() / stop_server()，再删掉还拿着模型的变量"
        if self.card.startswith("模拟的"):
            text += "（模拟的卡：数字是估算）"
        return text


def held_gpu_memory(pids: Sequence[int] = (), query: Callable[..., str] = _nvidia_smi) -> HeldMemory:
    """What this process and ``pids`` (servers it started) still hold on the GPU.

    On the simulated card: their reservations. On a real GPU: PyTorch's allocation in
    this process plus what ``nvidia-smi`` shows for ``pids``. Notebooks end by
    asserting that this is 0, after ``close()`` / ``stop_server()``.
    """
    from helpers import simulated_gpu

    card = simulated_gpu.card()
    if card is not None:
        mine = {os.getpid(), *pids}
        held = [h for h in simulated_gpu.holders() if h.pid in mine]
        return HeldMemory(sum(h.bytes for h in held), card.label, tuple(h.describe() for h in held))
    import torch

    if not torch.cuda.is_available():
        return HeldMemory(0, None)
    total = torch.cuda.memory_allocated() if torch.cuda.is_initialized() else 0
    holders = [f"这个内核的 PyTorch {total / GIB:.2f} GiB"] if total else []
    if pids:
        try:
            for line in query("--query-compute-apps=pid,used_memory").splitlines():
                pid, used_mib = (int(v) for v in line.split(","))
                if pid in pids:
                    total += used_mib * 1024**2
                    holders.append(f"pid {pid} {used_mib / 1024:.2f} GiB")
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    return HeldMemory(total, "GPU", tuple(holders))


def hold_on_simulated_card(owner, settings) -> None:
    """On the simulated card, reserve what ``settings``' model takes for as long as ``owner`` exists.

    Called for every engine that holds weights (``owner`` is its model object), so a
    copy that keeps the model alive keeps the reservation. No-op on a real GPU, and
    for ``device=cpu`` (not on the card at all).
    """
    from helpers import simulated_gpu

    card = simulated_gpu.card()
    if card is None or settings.device == "cpu":
        return
    estimate = reservation_estimate(settings)
    name = f"{simulated_gpu.program_name()}里的 {settings.model} 引擎"
    simulated_gpu.hold_while_alive(owner, card, estimate.total, name)


# Host memory (RAM) while a request's media is decoded and prepared. helpers.media
# scales every picture and frame to its final size as soon as it is decoded, so
# only the decoder's own full-size buffers depend on the input's resolution.
VIDEO_DECODER_THREADS = 4  # helpers.media decodes with this many FFmpeg frame threads
# The processor holds up to three float32 copies of the pixels (converted, normalised, patches).
PROCESSOR_BYTES_PER_VALUE = 3 * 4


def image_host_bytes(input_pixels: int, pixels: int, images: int = 1) -> int:
    """RAM to decode ``images`` pictures of ``input_pixels`` and prepare them at ``pixels`` each.

    One full-size RGB picture at a time, plus the copy PIL makes while converting
    it, then every scaled picture and the processor's float32 copies of it.
    """
    full = 2 * input_pixels * 3
    return full + images * pixels * 3 * (1 + PROCESSOR_BYTES_PER_VALUE)


def video_host_bytes(
    input_pixels: int, pixels: int, frames: int, decoder_threads: int = VIDEO_DECODER_THREADS
) -> int:
    """RAM to decode a video of ``input_pixels`` frames and prepare ``frames`` frames of ``pixels``.

    The decoder holds at most about two YUV 4:2:0 frames (1.5 bytes per pixel)
    per thread plus two references; then come the sampled RGB frames, the uint8
    tensor handed to the processor and its float32 copies.
    """
    decoder = (2 * decoder_threads + 2) * input_pixels * 3 // 2
    return decoder + frames * pixels * 3 * (2 + PROCESSOR_BYTES_PER_VALUE)
