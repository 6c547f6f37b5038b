"""The model family a learner chooses from: one registry of ids, shapes, sampling defaults and vLLM flags.

Every Qwen3-VL size we teach (2B, 4B, 8B) x Instruct / Thinking x BF16 / FP8,
plus the successor ``Qwen/Qwen3.5-4B``, has one :class:`ModelSpec` here. The
download (size check), the VRAM estimate (:func:`helpers.costs.shape_for_model`),
the environment check, the engine's sampling defaults and
:mod:`helpers.vllm_server`'s flags all read it, so "what if I pick the 8B
Thinking FP8" has one answer everywhere::

    spec = model_spec("Qwen/Qwen3-VL-8B-Thinking-FP8")
    spec.thinking, spec.fp8, spec.weight_bytes, spec.sampling, spec.vllm_flags()

Sources (read 2026-12 through copies of the model cards and configs; the build
machine has no model hub access, so figures marked *unverified* could not be
re-read from the hub and are estimates):

- Shapes of Qwen3-VL 2B / 4B / 8B (text layers, KV heads, head_dim, parameters):
  their ``config.json`` files as already used by :mod:`helpers.costs` (4B: 36
  layers, 8 KV heads x 128; FACTS.md). The same numbers hold for Instruct and
  Thinking (same architecture, different post-training).
- Sampling: the model cards' "Generation Hyperparameters" (e.g.
  huggingface.co/Qwen/Qwen3-VL-4B-Instruct#generation-hyperparameters and the
  -Thinking card; the same block is quoted in QwenLM/Qwen3-VL's README and in
  Unsloth's Qwen3-VL guide): vision-language Instruct ``top_p 0.8, top_k 20,
  temperature 0.7, repetition_penalty 1.0, presence_penalty 1.5,
  out_seq_length 16384``; Thinking ``top_p 0.95, top_k 20, temperature 1.0,
  repetition_penalty 1.0, presence_penalty 0.0, out_seq_length 40960``.
- Qwen3.5-4B: model card "Model Overview" (32 layers laid out as 8 x (3 x Gated
  DeltaNet + 1 x Gated Attention); gated attention 16 Q / 4 KV heads of 256;
  vocabulary 248,320) and its recommended sampling (thinking: temperature 1.0,
  top_p 0.95, top_k 20, presence_penalty 1.5; non-thinking: 0.7 / 0.8 / 20 /
  1.5; answers up to 32,768 tokens). Its parameter count (~4.7 B with the
  vision tower; secondary sources say 4.5-5 B) is *unverified*.
- FP8 checkpoints (``-FP8``): Qwen's fine-grained FP8 (e4m3, 128x128 blocks).
  The linear layers of the language model are stored in 1 byte; the vision
  tower and the embeddings / LM head stay in bf16. Those bf16 parts are our
  *unverified* estimate (embeddings from vocabulary x hidden size, vision tower
  ~0.41 B for 2B/4B and ~0.58 B for 8B); for the 4B it gives 5.2 GB against
  8.9 GB in bf16, matching the 3.6 GB drop a community L4 benchmark measured
  (hahoangtuanhung-hust/Benchmark-Qwen3-VL-4B: peak 11.2 GB FP16 vs 7.6 GB FP8).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

QWEN3_VL = "qwen3_vl"
QWEN3_5 = "qwen3_5"

# Demo checkpoints (helpers.demo_model): tiny random weights, real classes and templates.
DEMO_MODEL = "demo"
DEMO_THINKING_MODEL = "demo-thinking"
DEMO_QWEN3_5_MODEL = "demo-qwen3.5"
DEMO_MODELS = (DEMO_MODEL, DEMO_THINKING_MODEL, DEMO_QWEN3_5_MODEL)

# FP8 compute (FP8 tensor cores) needs Ada (8.9) or Hopper (9.0) and newer. Older cards from 7.5 still
# run FP8 checkpoints in vLLM (weights kept in FP8, 16-bit compute: Marlin kernels); transformers
# (finegrained_fp8) dequantizes them to bf16 there.
FP8_MIN_COMPUTE_CAPABILITY = (8, 9)


@dataclass(frozen=True)
class SamplingDefaults:
    """What a request that leaves a sampling parameter out gets (Qwen's published settings)."""

    temperature: float
    top_p: float
    top_k: int
    presence_penalty: float
    repetition_penalty: float
    max_tokens: int  # Qwen's recommended answer length (out_seq_length); the server caps it
    source: str

    def as_dict(self) -> dict[str, float | int]:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "presence_penalty": self.presence_penalty,
            "repetition_penalty": self.repetition_penalty,
            "max_tokens": self.max_tokens,
        }


VL_INSTRUCT_DEFAULTS = SamplingDefaults(
    0.7, 0.8, 20, 1.5, 1.0, 16384, "Qwen3-VL Instruct model card, Generation Hyperparameters (VL)"
)
VL_THINKING_DEFAULTS = SamplingDefaults(
    1.0, 0.95, 20, 0.0, 1.0, 40960, "Qwen3-VL Thinking model card, Generation Hyperparameters (VL)"
)
QWEN3_5_THINKING_DEFAULTS = SamplingDefaults(
    1.0, 0.95, 20, 1.5, 1.0, 32768, "Qwen3.5 model card, thinking mode, general tasks"
)
QWEN3_5_INSTRUCT_DEFAULTS = SamplingDefaults(
    0.7, 0.8, 20, 1.5, 1.0, 32768, "Qwen3.5 model card, non-thinking mode, general tasks"
)


@dataclass(frozen=True)
class Shape:
    """The numbers that decide memory: layers that keep a KV cache, KV heads, head size, parameters."""

    kv_layers: int
    kv_heads: int
    head_dim: int
    parameters: int
    bf16_parameters_in_fp8: int  # parameters an FP8 build keeps in bf16 (vision tower, embeddings)


# Per size; Instruct and Thinking share the architecture.
SHAPES: dict[tuple[str, str], Shape] = {
    (QWEN3_VL, "2B"): Shape(28, 8, 128, 2_130_000_000, 311_000_000 + 410_000_000),
    (QWEN3_VL, "4B"): Shape(36, 8, 128, 4_440_000_000, 389_000_000 + 410_000_000),
    # 8B: embeddings and LM head are separate matrices (2 x 151936 x 4096).
    (QWEN3_VL, "8B"): Shape(36, 8, 128, 8_770_000_000, 2 * 622_000_000 + 580_000_000),
    # Qwen3.5-4B: only 8 of its 32 layers are attention layers with a KV cache; the 24 Gated
    # DeltaNet layers keep a fixed-size state (~25-50 MB in all), left out of the estimate.
    (QWEN3_5, "4B"): Shape(8, 4, 256, 4_700_000_000, 636_000_000 + 410_000_000),
}


@dataclass(frozen=True)
class ModelSpec:
    """One model id and everything the tutorial needs to know about it before downloading it."""

    model_id: str
    family: str  # QWEN3_VL or QWEN3_5
    size: str  # "2B", "4B", "8B"
    thinking: bool  # the chat template opens <think>: the answer is reasoning, </think>, answer
    fp8: bool
    sampling: SamplingDefaults
    demo: bool = False
    notes: tuple[str, ...] = field(default=())  # where this family differs (shown by notebook 08)

    @property
    def name(self) -> str:
        return self.model_id.rsplit("/", 1)[-1]

    @property
    def shape(self) -> Shape:
        return SHAPES[(self.family, self.size)]

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weights on disk and in GPU memory (bf16: 2 per parameter; FP8: see module doc)."""
        shape = self.shape
        if not self.fp8:
            return 2 * shape.parameters
        return (shape.parameters - shape.bf16_parameters_in_fp8) + 2 * shape.bf16_parameters_in_fp8

    @property
    def kv_bytes_per_token(self) -> int:
        shape = self.shape
        return 2 * shape.kv_layers * shape.kv_heads * shape.head_dim * 2  # keys + values, bf16

    @property
    def variant(self) -> str:
        return ("Thinking" if self.thinking else "Instruct") + (" FP8" if self.fp8 else " BF16")

    def vllm_flags(self) -> list[str]:
        """Flags ``vllm serve`` needs for this model beyond the common ones.

        Thinking models: ``--reasoning-parser qwen3`` (vLLM 0.32's name; without it the
        reasoning stays inside ``content`` and ``reasoning_content`` is empty, the most
        reported Qwen3-VL serving problem: QwenLM/Qwen3-VL#1504, #1750, vllm#26239).
        FP8 ids need no flag: vLLM reads ``quantization_config`` from config.json.
        """
        return ["--reasoning-parser", "qwen3"] if self.thinking else []


def _qwen3_vl_specs() -> list[ModelSpec]:
    specs = []
    for size in ("2B", "4B", "8B"):
        for thinking in (False, True):
            for fp8 in (False, True):
                variant = "Thinking" if thinking else "Instruct"
                model_id = f"Qwen/Qwen3-VL-{size}-{variant}" + ("-FP8" if fp8 else "")
                defaults = VL_THINKING_DEFAULTS if thinking else VL_INSTRUCT_DEFAULTS
                specs.append(ModelSpec(model_id, QWEN3_VL, size, thinking, fp8, defaults))
    return specs


QWEN3_5_NOTE = (
    "Qwen3.5 needs transformers with qwen3_5 (5.24 has it). vLLM 0.32 serves it (tests_vllm: demo-qwen3.5 on "
    "the CPU build, in bf16: its Gated DeltaNet CPU kernel takes bf16 only, which needs AVX-512 BF16, and "
    "head size 128). It writes tool calls in the qwen3_coder XML format, which this tutorial's server does "
    "not parse (vLLM: --tool-call-parser qwen3_coder)."
)

MODELS: tuple[ModelSpec, ...] = (
    *_qwen3_vl_specs(),
    ModelSpec(
        "Qwen/Qwen3.5-4B", QWEN3_5, "4B", True, False, QWEN3_5_THINKING_DEFAULTS, notes=(QWEN3_5_NOTE,)
    ),
    # The demo checkpoints stand in for the real models they copy (shape figures are the real ones).
    ModelSpec(DEMO_MODEL, QWEN3_VL, "4B", False, False, VL_INSTRUCT_DEFAULTS, demo=True),
    ModelSpec(DEMO_THINKING_MODEL, QWEN3_VL, "4B", True, False, VL_THINKING_DEFAULTS, demo=True),
    ModelSpec(DEMO_QWEN3_5_MODEL, QWEN3_5, "4B", True, False, QWEN3_5_THINKING_DEFAULTS, demo=True),
)
_BY_NAME = {spec.model_id.rsplit("/", 1)[-1].lower(): spec for spec in MODELS}


def model_spec(model: str) -> ModelSpec | None:
    """The registry entry for a model id ("Qwen/Qwen3-VL-8B-Thinking", case-insensitive), or None.

    A local folder named like a known id (``~/models/Qwen/Qwen3-VL-4B-Thinking``)
    matches that id; any other folder or id gives None.
    """
    name = str(model).strip().rstrip("/").rsplit("/", 1)[-1].lower()
    return _BY_NAME.get(name)


def real_models() -> list[ModelSpec]:
    """The downloadable ids, in the order of the README table."""
    return [spec for spec in MODELS if not spec.demo]


def is_demo_model(model: str) -> bool:
    return model in DEMO_MODELS


def thinking_default(model: str) -> bool | None:
    """Whether ``model`` answers with reasoning first (None: unknown id, decided by its template)."""
    spec = model_spec(model)
    return spec.thinking if spec else None


def fp8_supported(capability: tuple[int, int] | None) -> bool:
    """FP8 compute needs capability >= 8.9 (Ada: RTX 4090, L4, L40S; Hopper: H100, H20)."""
    return capability is not None and tuple(capability) >= FP8_MIN_COMPUTE_CAPABILITY


__all__: Sequence[str] = (
    "DEMO_MODELS",
    "MODELS",
    "ModelSpec",
    "SamplingDefaults",
    "fp8_supported",
    "model_spec",
    "real_models",
    "thinking_default",
)
