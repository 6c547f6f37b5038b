"""The simulated GPU card, the memory probes and the rules every model holder applies (fast, no vLLM)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref

import pytest
import torch

from helpers import launcher, simulated_gpu
from helpers.config import Settings
from helpers.costs import (
    GIB,
    NotEnoughGPUMemory,
    check_gpu_memory,
    default_probe,
    gpu_count,
    held_gpu_memory,
    nvidia_smi_probe,
    reservation_estimate,
)
from helpers.engine import Engine, _without_frames, gpu_copy
from helpers.vllm_server import check_vllm_fits, side_by_side, vllm_command

HELLO = [{"role": "user", "content": "你好"}]
FOUR_B_AT_32K = reservation_estimate(Settings.from_env({}, model="demo")).total  # 4B bf16 + 32768 tokens


@pytest.fixture
def card(monkeypatch, tmp_path):
    """A simulated RTX 4090 with its own registry (never the machine-wide one other runs share)."""
    if torch.cuda.is_available():
        pytest.skip("the simulated card stands in only where there is no real GPU")
    monkeypatch.setenv("QWEN3VL_SIMULATE_GPU", "rtx4090")
    monkeypatch.setenv("QWEN3VL_SIMULATE_GPU_DIR", str(tmp_path / "registry"))
    return simulated_gpu.card()


def demo(**changes) -> Settings:
    return Settings.from_env({}, model="demo", **changes)


# ---------------------------------------------------------------- the card
def test_card_values_and_sizes():
    assert simulated_gpu.parse_card("rtx4090").total == 24564 * 1024**2
    assert simulated_gpu.parse_card("A100-80G").total == 80 * GIB
    assert simulated_gpu.parse_card("24GiB").total == 24 * GIB
    assert simulated_gpu.parse_card("16GB").total == 16 * 10**9
    with pytest.raises(ValueError, match="rtx4090"):
        simulated_gpu.parse_card("big")
    assert simulated_gpu.card({}) is None and simulated_gpu.card({"QWEN3VL_SIMULATE_GPU": ""}) is None


def test_the_demo_model_reserves_what_the_taught_model_takes(card):
    estimate = reservation_estimate(demo())
    assert 14.5 * GIB < estimate.total < 15 * GIB  # 8.3 GiB weights + 4.5 GiB KV (32768) + 2 GiB
    assert reservation_estimate(demo(max_model_len=8192)).total < 11.5 * GIB
    status = check_gpu_memory(demo())
    assert status.simulated == card.label and status.needed == estimate.total
    assert "模拟的 NVIDIA GeForce RTX 4090" in status.describe() and "不是测量" in status.describe()


def test_a_reservation_lives_as_long_as_its_owner_and_its_process(card):
    class Weights:  # stands for the model object
        pass

    weights = Weights()
    simulated_gpu.hold_while_alive(weights, card, 10 * GIB, "test")
    simulated_gpu.hold_while_alive(weights, card, 10 * GIB, "test")  # once per owner
    assert simulated_gpu.used() == 10 * GIB
    del weights
    gc.collect()
    assert simulated_gpu.used() == 0

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    simulated_gpu.reserve(card, 5 * GIB, "a process that has exited", pid=gone.pid)
    assert simulated_gpu.holders() == []  # stale entries are dropped
    assert simulated_gpu.peak()["bytes"] == 10 * GIB


def test_nothing_is_registered_beyond_the_card(card):
    simulated_gpu.reserve(card, 20 * GIB, "first")
    with pytest.raises(simulated_gpu.SimulatedOutOfMemory, match="out of memory"):
        simulated_gpu.reserve(card, 5 * GIB, "second")
    assert simulated_gpu.peak()["bytes"] == 20 * GIB and "first" in simulated_gpu.peak()["holders"][0]


# ------------------------------------------------------ engines on the card
def test_close_frees_the_reservation_of_every_copy(card, demo_checkpoint):
    from helpers.server import create_app

    engine = Engine.load(demo(), verbose=False)
    assert simulated_gpu.used() == FOUR_B_AT_32K
    copy = engine.with_settings(presence_penalty=0)  # notebook 04's doc_engine
    app = create_app(settings=demo(max_queue=2, ui=False), engine=engine)  # the server's own copy
    assert simulated_gpu.used() == FOUR_B_AT_32K  # one model, one reservation
    engine.close()
    gc.collect()
    assert simulated_gpu.holders() == []  # a copy that kept the model would keep 14.8 GiB here
    assert copy.closed and copy.model is None and app.state.holder.engine.model is None


def test_loading_on_a_full_card_says_what_holds_it_in_chinese_first(card, demo_checkpoint):
    simulated_gpu.reserve(card, 12 * GIB, "另一个内核里的引擎")
    with pytest.raises(NotEnoughGPUMemory) as info:
        Engine.load(demo(), verbose=False)
    message = str(info.value)
    assert message.startswith("显存不够") and message.index("显存不够") < message.index("Not enough")
    assert "另一个内核里的引擎" in message and "模拟的 NVIDIA GeForce RTX 4090" in message
    assert Engine.load(demo(max_model_len=4096), verbose=False).closed is False  # 10.8 GiB fits in 12


def test_the_launcher_checks_the_card_before_starting_anything(card, tmp_path):
    simulated_gpu.reserve(card, 15 * GIB, "一个没停的服务")
    with pytest.raises(NotEnoughGPUMemory, match="一个没停的服务"):
        launcher.start_server(model="demo", port=launcher.free_port(), run_dir=tmp_path)
    assert not list(tmp_path.glob("*.pid"))


def test_inputs_go_to_the_device_as_a_copy(engine):
    prepared = engine.prepare(HELLO)
    moved = gpu_copy(prepared.inputs, "meta")
    assert moved["input_ids"].device.type == "meta"
    assert prepared.inputs["input_ids"].device.type == "cpu"  # BatchFeature.to() would have moved it


def test_a_stored_error_keeps_no_tensors_alive():
    seen = []

    def fail():
        pixels = torch.zeros(1000)  # what a failed generation leaves in its frame
        seen.append(weakref.ref(pixels))
        raise RuntimeError("boom")

    try:
        fail()
    except RuntimeError as exc:
        error = exc
    gc.collect()
    assert seen[0]() is not None  # the traceback keeps the frame's locals
    _without_frames(error)
    gc.collect()
    assert seen[0]() is None and error.__traceback__.tb_next.tb_frame.f_code.co_name == "fail"


# ---------------------------------------------------------------- probes
SMI = "0, GPU-aaaa1111, 1000, 24564\n1, GPU-bbbb2222, 20000, 24564\n2, GPU-cccc3333, 30000, 81920\n"


def test_nvidia_smi_probe_follows_the_device_and_cuda_visible_devices():
    def query(*args):
        return SMI

    assert nvidia_smi_probe("cuda", {}, query) == (1000 * 1024**2, 24564 * 1024**2)
    assert nvidia_smi_probe("cuda:1", {}, query)[0] == 20000 * 1024**2
    assert nvidia_smi_probe("cuda:0", {"CUDA_VISIBLE_DEVICES": "2,1"}, query)[0] == 30000 * 1024**2
    assert nvidia_smi_probe("cuda:1", {"CUDA_VISIBLE_DEVICES": "2,1"}, query)[0] == 20000 * 1024**2
    assert nvidia_smi_probe(0, {"CUDA_VISIBLE_DEVICES": "GPU-bbbb2222"}, query)[0] == 20000 * 1024**2
    assert nvidia_smi_probe(0, {"CUDA_VISIBLE_DEVICES": ""}, query) is None  # nothing visible
    assert nvidia_smi_probe("cuda:3", {}, query) is None
    assert gpu_count({"CUDA_VISIBLE_DEVICES": "0,1"}, query) == 2 and gpu_count({}, query) == 3


def test_the_default_probe_reads_the_configured_cuda_device(monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: asked.append(i) or (GIB, 2 * GIB))
    monkeypatch.delenv("QWEN3VL_SIMULATE_GPU", raising=False)
    assert default_probe(demo(device="cuda:1"))() == (GIB, 2 * GIB) and asked == [1]
    assert default_probe(demo(device="cpu"))() is None


# ---------------------------------------------------------------- vLLM
def test_vllm_always_gets_a_memory_share(demo_checkpoint):
    def share(command):
        return command[command.index("--gpu-memory-utilization") + 1]

    assert share(vllm_command(demo(), "py", demo_checkpoint, cpu=True)) == "0.9"
    assert share(vllm_command(demo(), "py", demo_checkpoint, cpu=False, gpu_memory_utilization=0.5)) == "0.5"
    given = vllm_command(demo(), "py", demo_checkpoint, extra_args=["--gpu-memory-utilization", "0.3"])
    assert given.count("--gpu-memory-utilization") == 1


def test_vllm_next_to_our_server_is_refused_with_what_to_do(card, demo_checkpoint):
    simulated_gpu.reserve(card, FOUR_B_AT_32K, "我们的服务里的 demo 引擎")
    command = vllm_command(demo(), "py", demo_checkpoint, cpu=True)
    with pytest.raises(NotEnoughGPUMemory) as info:
        check_vllm_fits(demo(), command)
    assert "我们的服务里的 demo 引擎" in str(info.value) and "stop_server" in str(info.value)
    with pytest.raises(NotEnoughGPUMemory, match="需要 2 块 GPU"):
        check_vllm_fits(demo(), [*command, "--tensor-parallel-size", "2"])


@pytest.mark.parametrize(("name", "length", "share"), [("rtx4090", 8192, 0.52), ("a100-80g", 32768, 0.81)])
def test_side_by_side_budgets_fit_both_servers(card, monkeypatch, name, length, share):
    monkeypatch.setenv("QWEN3VL_SIMULATE_GPU", name)
    budget = side_by_side(demo())
    assert (budget["max_model_len"], budget["gpu_memory_utilization"]) == (length, share)
    total = simulated_gpu.card().total
    assert budget["ours_bytes"] + budget["vllm_bytes"] <= total
    simulated_gpu.reserve(simulated_gpu.card(), budget["ours_bytes"], "ours")
    command = vllm_command(demo(), "py", None, cpu=True, gpu_memory_utilization=share)
    assert check_vllm_fits(demo(), command)["reserve"] == budget["vllm_bytes"]


def test_no_gpu_and_no_simulation_checks_nothing(monkeypatch):
    monkeypatch.delenv("QWEN3VL_SIMULATE_GPU", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check_gpu_memory(demo()).cuda is False
    assert "CPU" in check_gpu_memory(demo()).describe()


def test_what_a_kernel_still_holds(card):
    assert held_gpu_memory().bytes == 0 and "✅" in held_gpu_memory().describe()
    simulated_gpu.reserve(card, 3 * GIB, "我们的服务", pid=os.getppid())  # e.g. a server it started
    assert held_gpu_memory().bytes == 0
    held = held_gpu_memory([os.getppid()])
    assert held.bytes == 3 * GIB and "❌" in held.describe() and "模拟的卡" in held.describe()


def test_the_launcher_checks_with_the_flags_the_server_gets():
    settings = launcher._with_flags(
        demo(), ["--max-model-len", "4096", "--log-level", "warning", "--max-queue", "3"]
    )
    assert (settings.max_model_len, settings.max_queue) == (4096, 3)
