"""GPU figures: peak VRAM, greedy decode speed against the memory-bandwidth limit, two copies fitting."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from helpers.bench.common import GPU_DECODE_TOKENS, text_messages
from helpers.config import Settings
from helpers.costs import GpuMemoryStatus, MemoryProbe, NotEnoughGPUMemory, gpu_memory_status

if TYPE_CHECKING:
    from helpers.engine import Engine


# Memory bandwidth in GB/s. Every substring must appear in torch.cuda.get_device_name(); first match wins.
GPU_BANDWIDTH_GB_S: list[tuple[tuple[str, ...], float]] = [
    (("RTX 4090",), 1008.0),
    (("H100", "PCIE"), 2000.0),
    (("H100", "HBM3"), 3350.0),  # "NVIDIA H100 80GB HBM3" is the SXM card
    (("H100", "SXM"), 3350.0),
    (("H200",), 4800.0),
    (("A100", "80GB"), 2039.0),
    (("L40S",), 864.0),
]


# ------------------------------------------------------------------------ GPU
def gpu_bandwidth_gb_s(name: str | None) -> float | None:
    """Memory bandwidth (GB/s) of a GPU named like ``torch.cuda.get_device_name()``; None if unknown."""
    if not name:
        return None
    upper = name.upper()
    for parts, bandwidth in GPU_BANDWIDTH_GB_S:
        if all(part in upper for part in parts):
            return bandwidth
    return None


def decode_weight_bytes(model) -> int:
    """Bytes of weights read for every decoded token: the language model and its output head.

    The vision tower runs once per picture during prefill, not per token, and an
    input embedding that is not shared with the output head is only gathered
    one row at a time, so neither counts toward the bandwidth limit.
    """
    head = model.get_output_embeddings()
    head_weight = head.weight if head is not None else None
    embed_weight = model.get_input_embeddings().weight
    total = 0
    for name, param in model.named_parameters():  # tied weights are listed once
        if ".visual." in f".{name}" or (param is embed_weight and param is not head_weight):
            continue
        total += param.numel() * param.element_size()
    return total


def gpu_decode(
    engine: Engine, messages: list[dict[str, Any]] | None = None, tokens: int = GPU_DECODE_TOKENS
) -> dict[str, Any]:
    """Peak VRAM, greedy decode speed and its fraction of the bandwidth limit; all None without CUDA."""
    facts: dict[str, Any] = dict.fromkeys(
        ("name", "peak_vram_bytes", "decode_tokens", "decode_tokens_per_s", "bandwidth_gb_s"),
    )
    facts["bandwidth_fraction"] = None
    if not str(engine.device).startswith("cuda"):
        return facts
    import torch

    result = engine.chat(messages or text_messages(), max_new_tokens=tokens, temperature=0)
    decode_s = result.seconds - (result.first_token_seconds or 0.0)
    generated = result.usage.completion_tokens
    rate = (generated - 1) / decode_s if generated > 1 and decode_s > 0 else None
    name = torch.cuda.get_device_name(engine.device)
    bandwidth = gpu_bandwidth_gb_s(name)
    facts.update(
        name=name,
        peak_vram_bytes=int(torch.cuda.max_memory_allocated(engine.device)),
        decode_tokens=generated,
        decode_tokens_per_s=rate,
        bandwidth_gb_s=bandwidth,
    )
    if rate and bandwidth:
        facts["bandwidth_fraction"] = decode_weight_bytes(engine.model) * rate / (bandwidth * 1e9)
    return facts


def check_two_copies_fit(settings: Settings, probe: MemoryProbe | None = None) -> GpuMemoryStatus:
    """On a GPU, make sure the model fits twice: the bench loads it on purpose in two processes.

    The in-process engine is the baseline and the server is what is measured
    (HTTP overhead = server - in-process), so both must hold the weights at once.
    They load at the same time, so each one's own check would see the whole GPU
    free; this checks both together first. Raises :class:`NotEnoughGPUMemory`.
    """
    status = gpu_memory_status(settings, probe)
    if status.cuda and status.free < 2 * status.needed:
        raise NotEnoughGPUMemory(
            "make bench loads the model twice on purpose (in this process as the baseline, and in the "
            "API server it measures), so it needs "
            f"2 x {status.needed / 1024**3:.1f} GiB; {status.free / 1024**3:.1f} GiB is free.\n"
            "  Fix: shut down other Jupyter kernels and servers that hold the GPU (`nvidia-smi` lists "
            "them), lower QWEN3VL_MAX_MODEL_LEN, or run the bench on the demo model (QWEN3VL_MODEL=demo)."
        )
    return status
