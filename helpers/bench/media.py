"""Video decoding speed and the peak memory (RAM, and VRAM on a GPU) of the largest media requests."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from helpers.assets import MOVING_CLIP_PATH
from helpers.bench.stats import measure_latency, median
from helpers.config import Settings
from helpers.costs import MemoryProbe

if TYPE_CHECKING:
    from helpers.engine import Engine


# ---------------------------------------------------------------------- video
def video_decode_speed(
    path: Path = MOVING_CLIP_PATH, fps: float = 8.0, repeats: int = 3, settings: Settings | None = None
) -> dict[str, Any]:
    """Frames per second of :func:`helpers.media.load_video` (PyAV) sampling ``path`` at ``fps``."""
    import av

    from helpers.config import Settings
    from helpers.media import load_video

    path = Path(path)
    settings = settings or Settings.from_env({}, model="demo", allowed_local_media_path=[path.parent])
    frames = len(load_video(str(path), settings, fps).frames)  # warm-up, and the frame count
    seconds = median(measure_latency(lambda: load_video(str(path), settings, fps), repeats))
    return {
        "reader": f"PyAV {av.__version__}",
        "file": path.name,
        "fps": float(fps),
        "frames": frames,
        "seconds": seconds,
        "frames_per_s": frames / seconds,
    }


# --------------------------------------------------------------------- memory
def _peak_rss_kib() -> int | None:
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def peak_rss_growth(fn: Callable[[], Any]) -> tuple[Any, int | None]:
    """``fn()`` and how far it raised this process's peak RSS, in bytes (None where Linux cannot tell).

    The peak is reset first (``/proc/self/clear_refs``), so earlier work does not hide it.
    """
    import gc

    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        return fn(), None
    before = _peak_rss_kib()
    result = fn()
    after = _peak_rss_kib()
    return result, None if before is None or after is None else (after - before) * 1024


def write_largest_media(folder: Path, pixels: int) -> tuple[Path, Path]:
    """A JPEG picture and a 2 s H.264 clip (4 distinct frames) of about ``pixels`` pixels, in ``folder``."""
    import av
    import numpy as np
    from PIL import ImageDraw

    side = max(64, math.isqrt(pixels) // 2 * 2)  # even sides for YUV 4:2:0
    picture = Image.new("RGB", (side, side), (120, 30, 30))
    ImageDraw.Draw(picture).rectangle((side // 8, side // 8, side // 2, side // 2), fill=(10, 200, 10))
    image_path = folder / "largest.jpg"
    picture.save(image_path, quality=90)
    del picture
    clip_path = folder / "largest.mp4"
    with av.open(str(clip_path), "w") as box:
        stream = box.add_stream("libx264", rate=2, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = side, side, "yuv420p"
        planes = np.full((side * 3 // 2, side), 128, np.uint8)  # Y plane, then U and V
        for i in range(4):
            planes[:side] = 40 + 50 * i
            planes[: side // 4, : side // 4] = 235
            for packet in stream.encode(av.VideoFrame.from_ndarray(planes, format="yuv420p")):
                box.mux(packet)
        for packet in stream.encode():
            box.mux(packet)
    return image_path, clip_path


def _vram_growth(engine: Engine, fn: Callable[[], Any]) -> int:
    import torch

    torch.cuda.synchronize(engine.device)
    torch.cuda.reset_peak_memory_stats(engine.device)
    before = torch.cuda.memory_allocated(engine.device)
    fn()
    return int(torch.cuda.max_memory_allocated(engine.device) - before)


def _request_vram(
    engine: Engine,
    local: Engine,
    messages: list[dict[str, Any]],
    tokens: int,
    measure: Callable[[Engine, Callable[[], Any]], int],
    probe: MemoryProbe | None,
) -> dict[str, Any]:
    """VRAM of one request generating one token, against its estimate; ``vram_skipped`` says why not.

    The bench's engine keeps a short context (BENCH_MAX_MODEL_LEN, so that two copies
    fit), shorter than the largest requests: this one runs with the context it needs.
    """
    from helpers import costs
    from helpers.errors import RequestError

    shape = costs.ModelShape.from_pretrained(engine.model_path, engine.dtype.itemsize)
    estimate = shape.kv_cache_bytes(tokens + 1) + costs.RUNTIME_OVERHEAD_BYTES
    entry: dict[str, Any] = {"vram_estimate_bytes": estimate, "vram_skipped": None}
    runner = local.with_settings(max_model_len=tokens + 1)
    reading = (probe or (lambda: costs.torch_probe(engine.device)))()
    if runner.max_model_len < tokens + 1:
        entry["vram_skipped"] = f"{tokens + 1} tokens exceed the model's context ({runner.max_model_len})"
    elif reading is not None and reading[0] < estimate:
        entry["vram_skipped"] = (
            f"needs about {costs.format_bytes(estimate)} of free GPU memory, "
            f"{costs.format_bytes(reading[0])} free"
        )
    else:
        try:
            entry["peak_vram_bytes"] = measure(
                engine, lambda: runner.chat(messages, max_new_tokens=1, temperature=0)
            )
        except RequestError as exc:  # e.g. out of memory (413): a figure we could not take
            entry["vram_skipped"] = exc.message
        else:
            entry["vram_ratio"] = entry["peak_vram_bytes"] / estimate
    return entry


def media_memory(
    engine: Engine,
    pixels: int | None = None,
    vram_growth: Callable[[Engine, Callable[[], Any]], int] | None = None,
    probe: MemoryProbe | None = None,
) -> dict[str, dict[str, Any]]:
    """Peak RSS (and VRAM on a GPU) of the largest image request and video request, against estimates.

    ``pixels`` (default ``max_image_input_pixels``) sizes every picture and frame.
    ``vram_growth`` measures the VRAM a call adds (default on a GPU: ``torch.cuda``
    peak statistics) and ``probe`` reads (free, total) GPU bytes (default
    ``torch.cuda.mem_get_info``); tests pass stand-ins for both.
    """
    import tempfile

    from helpers import costs

    if vram_growth is None and str(engine.device).startswith("cuda"):
        vram_growth = _vram_growth
    s = engine.settings
    frames = s.video_max_frames - s.video_max_frames % costs.TEMPORAL_PATCH_SIZE
    images = s.max_images_per_request
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-media-") as tmp:
        image_path, clip_path = write_largest_media(Path(tmp), pixels or s.max_image_input_pixels)
        local = engine.with_settings(allowed_local_media_path=[Path(tmp)])
        with Image.open(image_path) as picture:
            input_pixels = picture.width * picture.height
        cases = {
            "image": (
                [{"type": "image", "image": image_path.name}] * images,
                images,
                costs.image_host_bytes(input_pixels, s.image_max_pixels, images),
            ),
            "video": (
                [{"type": "video", "video": clip_path.name, "nframes": frames}],
                frames,
                costs.video_host_bytes(input_pixels, s.video_max_pixels, frames),
            ),
        }
        for kind, (content, pictures, estimate) in cases.items():
            messages = [{"role": "user", "content": [*content, {"type": "text", "text": "?"}]}]
            prepared, rss = peak_rss_growth(lambda messages=messages: local.prepare(messages))
            tokens = prepared.prompt_tokens
            del prepared
            entry: dict[str, Any] = {
                "input_pixels": input_pixels,
                "pictures": pictures,
                "prompt_tokens": tokens,
                "peak_rss_bytes": rss,
                "rss_estimate_bytes": estimate,
                "rss_ratio": None if rss is None else rss / estimate,
                "peak_vram_bytes": None,
                "vram_estimate_bytes": None,
                "vram_ratio": None,
                "vram_skipped": None,
            }
            if vram_growth is not None:
                entry.update(_request_vram(engine, local, messages, tokens, vram_growth, probe))
            results[kind] = entry
    return results
