"""The model registry: every id resolves, downloads (dry run), estimates, checks and gets its defaults."""

from __future__ import annotations

import pytest

from helpers import costs, download, env_check, models
from helpers.config import Settings
from helpers.env_check import FAIL, OK, WARN, DriverInfo, GpuDevice, TorchInfo
from helpers.vllm_server import model_flags

GIB = 1024**3
REAL_IDS = [spec.model_id for spec in models.real_models()]
OFFLINE = {"HF_HUB_OFFLINE": "1"}


def test_the_registry_holds_every_size_variant_and_precision_plus_qwen3_5():
    assert len(REAL_IDS) == 3 * 2 * 2 + 1
    assert "Qwen/Qwen3-VL-8B-Thinking-FP8" in REAL_IDS and "Qwen/Qwen3.5-4B" in REAL_IDS
    spec = models.model_spec("qwen/qwen3-vl-8b-thinking-fp8")  # ids are matched without case
    assert (spec.size, spec.thinking, spec.fp8, spec.family) == ("8B", True, True, models.QWEN3_VL)
    assert models.model_spec("/data/Qwen/Qwen3-VL-2B-Instruct/").model_id == "Qwen/Qwen3-VL-2B-Instruct"
    assert models.model_spec("Qwen/Qwen2.5-VL-7B-Instruct") is None


@pytest.mark.parametrize("model_id", REAL_IDS)
def test_each_id_has_a_shape_a_download_size_and_a_dry_run(model_id, tmp_path, capsys, monkeypatch):
    spec = models.model_spec(model_id)
    shape = costs.shape_for_model(model_id)
    assert shape is not None and shape.weight_bytes == spec.weight_bytes
    assert download.expected_download_bytes(model_id) > spec.weight_bytes
    monkeypatch.setattr(download, "free_disk_bytes", lambda path: 100 * GIB)
    monkeypatch.setattr(download, "download_model", lambda *a, **k: pytest.fail("a dry run downloaded"))
    code = download.main(["--model", model_id, "--dest", str(tmp_path / "m"), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and spec.variant in out and "没有下载" in out


def test_fp8_halves_the_quantised_layers_only():
    bf16 = models.model_spec("Qwen/Qwen3-VL-4B-Instruct")
    fp8 = models.model_spec("Qwen/Qwen3-VL-4B-Instruct-FP8")
    assert bf16.weight_bytes == costs.QWEN3_VL_4B.weight_bytes
    # The vision tower and embeddings stay bf16: about 5.2 GB against 8.9 GB.
    assert 5.0e9 < fp8.weight_bytes < 5.5e9
    assert fp8.kv_bytes_per_token == bf16.kv_bytes_per_token == 144 * 1024  # the KV cache stays bf16


def test_qwen3_5_keeps_a_kv_cache_in_its_attention_layers_only():
    spec = models.model_spec("Qwen/Qwen3.5-4B")
    assert spec.kv_bytes_per_token == 2 * 8 * 4 * 256 * 2  # 8 of 32 layers: 32 KiB per token
    assert costs.shape_for_model("Qwen/Qwen3.5-4B").kv_bytes_per_token == spec.kv_bytes_per_token


@pytest.mark.parametrize(
    ("model_id", "fits_4090", "fits_a100"),
    [
        ("Qwen/Qwen3-VL-2B-Instruct", True, True),
        ("Qwen/Qwen3-VL-4B-Thinking-FP8", True, True),
        ("Qwen/Qwen3-VL-8B-Instruct", True, True),
        ("Qwen/Qwen3.5-4B", True, True),
    ],
)
def test_the_default_budget_fits_a_4090_and_an_a100(model_id, fits_4090, fits_a100):
    settings = Settings(model=model_id)
    estimate = costs.memory_estimate(costs.shape_for_model(model_id), costs.max_request_tokens(settings))
    assert estimate.fits(24 * GIB) == fits_4090
    assert estimate.fits(80 * GIB) == fits_a100


def test_a_full_context_request_of_the_8b_in_bf16_does_not_fit_a_4090_but_fp8_does():
    tokens = 32768
    bf16 = costs.memory_estimate(costs.shape_for_model("Qwen/Qwen3-VL-8B-Instruct"), tokens)
    fp8 = costs.memory_estimate(costs.shape_for_model("Qwen/Qwen3-VL-8B-Instruct-FP8"), tokens)
    assert not bf16.fits(22 * GIB) and fp8.fits(22 * GIB)  # 22 GiB: what a 24 GB card leaves


@pytest.mark.parametrize(
    ("model_id", "temperature", "top_p", "presence_penalty"),
    [
        ("Qwen/Qwen3-VL-4B-Instruct", 0.7, 0.8, 1.5),
        ("Qwen/Qwen3-VL-2B-Thinking-FP8", 1.0, 0.95, 0.0),
        ("Qwen/Qwen3.5-4B", 1.0, 0.95, 1.5),
        ("demo-thinking", 1.0, 0.95, 0.0),
        ("/some/local/folder", 0.7, 0.8, 1.5),  # unknown: Qwen3-VL Instruct settings
    ],
)
def test_sampling_defaults_follow_the_variant(model_id, temperature, top_p, presence_penalty):
    defaults = Settings(model=model_id).sampling_defaults()
    assert (defaults.temperature, defaults.top_p, defaults.top_k) == (temperature, top_p, 20)
    assert defaults.presence_penalty == presence_penalty
    assert Settings(model=model_id, presence_penalty=0.3).sampling_defaults().presence_penalty == 0.3


def test_thinking_models_get_the_reasoning_parser_in_vllm():
    assert model_flags("Qwen/Qwen3-VL-4B-Thinking") == ["--reasoning-parser", "qwen3"]
    assert model_flags("demo-thinking") == ["--reasoning-parser", "qwen3"]
    assert model_flags("Qwen/Qwen3-VL-4B-Instruct-FP8") == []
    assert model_flags("demo") == []


ADA = GpuDevice("NVIDIA GeForce RTX 4090", 24 * GIB, 23 * GIB, (8, 9))
AMPERE = GpuDevice("NVIDIA GeForce RTX 3090", 24 * GIB, 23 * GIB, (8, 6))


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A GPU box faked at the function boundary (as tests/test_env_check.py does); returns a setter."""
    monkeypatch.setattr(env_check, "torch_info", lambda: TorchInfo("2.8.0+cu128", "0.23.0+cu128", "12.8"))
    monkeypatch.setattr(env_check, "driver_info", lambda: DriverInfo("570.124.04", "12.8"))
    monkeypatch.setattr(env_check, "memory_info", lambda: (64 * GIB, 60 * GIB))
    monkeypatch.setattr(env_check, "free_disk_bytes", lambda path: 50 * GIB)
    monkeypatch.setattr(env_check, "modelscope_reachable", lambda: (True, "ok"))

    def rows(model: str, device: GpuDevice) -> dict[str, env_check.CheckRow]:
        monkeypatch.setattr(env_check, "gpu_devices", lambda: [device])
        settings = Settings(model=model, model_root=tmp_path / "models")
        return {r.name: r for r in env_check.run_checks(settings, environ=OFFLINE)}

    return rows


VOLTA = GpuDevice("Tesla V100-SXM2-32GB", 32 * GIB, 31 * GIB, (7, 0))


def test_the_env_check_says_whether_this_card_runs_fp8(machine):
    assert machine("Qwen/Qwen3-VL-4B-Instruct-FP8", ADA)["FP8"].status == OK
    weight_only = machine("Qwen/Qwen3-VL-4B-Instruct-FP8", AMPERE)["FP8"]  # vLLM: FP8 weights, 16-bit compute
    assert (
        weight_only.status == WARN
        and "vLLM" in weight_only.fix
        and "Qwen/Qwen3-VL-4B-Instruct" in weight_only.fix
    )
    refused = machine("Qwen/Qwen3-VL-4B-Instruct-FP8", VOLTA)["FP8"]
    assert refused.status == FAIL and "QWEN3VL_MODEL=Qwen/Qwen3-VL-4B-Instruct" in refused.fix
    assert machine("Qwen/Qwen3-VL-4B-Instruct", VOLTA)["FP8"].status == OK  # not asked for


@pytest.mark.parametrize("model_id", ["Qwen/Qwen3-VL-8B-Thinking-FP8", "Qwen/Qwen3.5-4B"])
def test_the_fit_row_names_the_model_and_its_precision(machine, model_id):
    fit = machine(model_id, ADA)["显存估算（默认预算）"]
    assert fit.status == OK and model_id.rsplit("/", 1)[-1] in fit.value
    assert ("FP8" in fit.value) == model_id.endswith("FP8")


def test_the_gpu_check_uses_the_fp8_weights(tmp_path):
    bf16 = costs.gpu_memory_status(
        Settings(model="Qwen/Qwen3-VL-8B-Instruct", model_root=tmp_path), lambda: (20 * GIB, 24 * GIB)
    )
    fp8 = costs.gpu_memory_status(
        Settings(model="Qwen/Qwen3-VL-8B-Instruct-FP8", model_root=tmp_path), lambda: (20 * GIB, 24 * GIB)
    )
    assert bf16.needed - fp8.needed == pytest.approx(
        models.model_spec("Qwen/Qwen3-VL-8B-Instruct").weight_bytes
        - models.model_spec("Qwen/Qwen3-VL-8B-Instruct-FP8").weight_bytes
    )
    assert not bf16.ok and fp8.ok


@pytest.mark.parametrize(("model", "dtype"), [("demo", "float32"), ("demo-qwen3.5", "bfloat16")])
def test_vllms_cpu_build_runs_qwen3_5_in_bf16(model, dtype):
    from helpers.vllm_server import vllm_command

    command = vllm_command(Settings(model=model), "python", cpu=True)
    assert command[command.index("--dtype") + 1] == dtype  # its Gated DeltaNet CPU kernel takes bf16 only
