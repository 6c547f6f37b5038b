"""The inference engine: load Qwen3-VL once, then ``chat`` / ``stream_chat`` about text, images and videos.

Notebooks, the server and the benchmark all call this one class::

    engine = Engine.load()                      # settings from QWEN3VL_* variables
    result = engine.chat([{"role": "user", "content": "你好"}], max_new_tokens=64)
    for piece in (stream := engine.stream_chat(messages)):
        print(piece, end="")
    stream.result.usage

Nothing is loaded at import time.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from queue import Queue
from typing import Any

import torch

from helpers.config import ConfigError, Settings
from helpers.errors import RequestError, check_int, check_number, check_text
from helpers.markup import PLACEHOLDER, restore_markup, shield_markup, special_tokens, text_length
from helpers.messages import normalize_messages, vision_inputs
from helpers.reasoning import THINK_END, opens_reasoning, split_reasoning
from helpers.structured import Grammars, ResponseFormat, parse_response_format
from helpers.tools import ToolCall, ToolRequest, parse_tool_calls, parse_tools, refuse_markup

MAX_STOP_SEQUENCES = 4
# Temperatures below this are greedy decoding, as in vLLM: dividing logits by ~0 overflows.
GREEDY_TEMPERATURE = 1e-5
# Text is refused before tokenizing when it has more characters than this many per token
# of context: ordinary text averages 1.5-4 characters per token, so only text that
# could never fit is refused, and 30 MiB of it costs no tokenizer time.
MAX_CHARS_PER_TOKEN = 8
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


# ----------------------------------------------------------------- parameters
@dataclass(frozen=True)
class SamplingParams:
    """Validated generation parameters; ``None`` means "the model's generation_config default"."""

    max_new_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float | None = None
    max_tokens_given: bool = True  # False: the default, which may shrink to fit the context
    # Structured output (helpers.structured / helpers.tools): JSON answers and tool calls.
    response_format: ResponseFormat | None = None
    tools: ToolRequest | None = None
    # chat_template_kwargs.enable_thinking (Qwen3.5's switch); None: the template's default.
    enable_thinking: bool | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature is not None and self.temperature < GREEDY_TEMPERATURE

    @classmethod
    def build(
        cls,
        settings: Settings,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: str | list[str] | tuple[str, ...] | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        repetition_penalty: float | None = None,
        response_format: Any = None,
        tools: Any = None,
        tool_choice: Any = None,
        parallel_tool_calls: Any = None,
        chat_template_kwargs: Any = None,
    ) -> SamplingParams:
        """Check every parameter and raise :class:`RequestError` with the rule it broke.

        What a request leaves out takes the model's published settings
        (:meth:`Settings.sampling_defaults`, from :mod:`helpers.models`: Instruct
        temperature 0.7 / top_p 0.8 / top_k 20 / presence_penalty 1.5, Qwen3-VL
        Thinking 1.0 / 0.95 / 20 / 0). ``max_tokens`` left out is
        ``settings.default_max_new_tokens``; for a Thinking model, whose reasoning
        comes first, it is Qwen's recommended answer length capped at
        ``settings.max_new_tokens_limit``.
        """
        defaults = settings.sampling_defaults()
        max_tokens_given = max_new_tokens is not None
        if max_new_tokens is None:
            max_new_tokens = settings.default_max_new_tokens
            if _thinking(settings):
                max_new_tokens = max(max_new_tokens, min(defaults.max_tokens, settings.max_new_tokens_limit))
        temperature = defaults.temperature if temperature is None else temperature
        top_p = defaults.top_p if top_p is None else top_p
        top_k = defaults.top_k if top_k is None else top_k
        check_int("max_tokens", max_new_tokens, 1, settings.max_new_tokens_limit)
        if temperature is not None:
            check_number("temperature", temperature, 0.0, 2.0)
        if top_p is not None:
            check_number("top_p", top_p, 0.0, 1.0)
            if top_p == 0:
                raise RequestError(
                    "top_p must be greater than 0 (use temperature=0 for greedy)", param="top_p"
                )
        if top_k is not None:
            check_int("top_k", top_k, -1, 1_000_000)
            top_k = 0 if top_k == -1 else top_k  # -1 (vLLM) and 0 (transformers) both mean "off"
        if seed is not None:
            check_int("seed", seed, 0, 2**63 - 1)
        if isinstance(stop, str):
            stop = [stop]
        stop = tuple(stop or ()) if isinstance(stop, (list, tuple, type(None))) else (stop,)
        if len(stop) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) and s for s in stop):
            raise RequestError(
                f"stop must be a non-empty string or a list of at most {MAX_STOP_SEQUENCES} non-empty"
                " strings",
                param="stop",
            )
        for text in stop:
            check_text(text, "stop")
        if presence_penalty is None:
            presence_penalty = defaults.presence_penalty
        presence_penalty = check_number("presence_penalty", presence_penalty, -2.0, 2.0)
        if frequency_penalty is None:
            frequency_penalty = 0.0
        frequency_penalty = check_number("frequency_penalty", frequency_penalty, -2.0, 2.0)
        if repetition_penalty is not None:
            repetition_penalty = check_number("repetition_penalty", repetition_penalty, 0.01, 10.0)
        enable_thinking = _enable_thinking(chat_template_kwargs)
        fmt = parse_response_format(response_format)
        tool_request = parse_tools(tools, tool_choice, parallel_tool_calls)
        if fmt is not None and fmt.constrained and tool_request and tool_request.choice == "auto":
            raise RequestError(
                "response_format (JSON) together with tools and tool_choice 'auto' is not supported: use"
                " tool_choice 'none' for a JSON answer, or 'required' / a named function for a call",
                param="response_format",
            )
        return cls(
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            seed,
            stop,
            presence_penalty,
            frequency_penalty,
            repetition_penalty,
            max_tokens_given,
            fmt if fmt is not None and fmt.constrained else None,
            tool_request,
            enable_thinking,
        )

    @classmethod
    def defaults(cls, settings: Settings) -> dict[str, Any]:
        """What a request that leaves every sampling parameter out gets (shown by /health and describe())."""
        chosen = cls.build(settings)
        return {
            "temperature": chosen.temperature,
            "top_p": chosen.top_p,
            "top_k": chosen.top_k,
            "presence_penalty": chosen.presence_penalty,
            "max_tokens": chosen.max_new_tokens,
            "source": settings.sampling_defaults().source,
        }

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
        if self.repetition_penalty is not None:
            kwargs["repetition_penalty"] = self.repetition_penalty
        if self.greedy:
            return {**kwargs, "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        given = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
        given = {k: v for k, v in given.items() if v is not None}
        if given:  # anything given means sampling; what is left out keeps the model's default
            kwargs["do_sample"] = True
        return {**kwargs, **given}

    def logits_processors(self, prompt_tokens: int) -> list[Any]:
        """Processors ``generate`` has no flag for (run before temperature / top-p / top-k)."""
        if self.presence_penalty or self.frequency_penalty:
            return [OpenAIPenalties(prompt_tokens, self.presence_penalty, self.frequency_penalty)]
        return []


def _enable_thinking(kwargs: Any) -> bool | None:
    """``enable_thinking`` from a request's ``chat_template_kwargs``; other keys are refused."""
    if kwargs is None:
        return None
    if not isinstance(kwargs, dict) or set(kwargs) - {"enable_thinking"}:
        raise RequestError(
            'chat_template_kwargs: only {"enable_thinking": true | false} is supported',
            param="chat_template_kwargs",
        )
    value = kwargs.get("enable_thinking")
    if value is not None and not isinstance(value, bool):
        raise RequestError(
            "chat_template_kwargs.enable_thinking must be true or false", param="chat_template_kwargs"
        )
    return value


def _thinking(settings: Settings) -> bool:
    from helpers.models import thinking_default

    return bool(thinking_default(settings.model))


class OpenAIPenalties:
    """``presence_penalty`` and ``frequency_penalty`` with OpenAI's semantics.

    For every token already in the answer (not the prompt), subtract
    ``presence_penalty`` once and ``frequency_penalty`` per occurrence from its
    logit. Positive values push the model away from repeating itself.
    """

    def __init__(self, prompt_tokens: int, presence: float, frequency: float) -> None:
        self.prompt_tokens = prompt_tokens
        self.presence = presence
        self.frequency = frequency

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        answer = input_ids[:, self.prompt_tokens :]
        if answer.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores)
        counts.scatter_add_(1, answer, torch.ones_like(answer, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


class AfterToken:
    """A logits processor that starts working only after ``token`` has been generated."""

    def __init__(self, inner: Any, token: int, prompt_tokens: int) -> None:
        self.inner = inner
        self.token = token
        self.prompt_tokens = prompt_tokens
        self.active = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if not self.active:
            answer = input_ids[0, self.prompt_tokens :].tolist()
            if self.token not in answer:
                return scores
            self.active = True
            # The inner processor feeds its grammar what comes after the token.
            self.inner._seen = self.prompt_tokens + answer.index(self.token) + 1
        return self.inner(input_ids, scores)


# -------------------------------------------------------------------- results
@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total_tokens": self.total_tokens}


@dataclass
class ChatResult:
    text: str  # the answer; with tools: the text outside the tool calls ("" when there is none)
    finish_reason: str  # "stop" (end or a stop string), "length" (max_new_tokens) or "tool_calls"
    usage: Usage
    seconds: float = 0.0
    first_token_seconds: float | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)  # OpenAI shape: call.as_openai()
    # Thinking models: the text before </think> (helpers.reasoning); None when there is none.
    reasoning: str | None = None


@dataclass
class Prepared:
    """Model inputs for one conversation, ready for ``generate``."""

    inputs: Any  # transformers BatchFeature
    prompt: str
    grammar: Any = None  # the compiled xgrammar grammar for response_format / tools, if any
    reasoning: bool = False  # the prompt opens <think>: the answer starts with reasoning
    # A thinking-capable model (its template opens <think>), answered as vLLM's qwen3 parser does even
    # when this request turned thinking off: a stray </think> in the answer is dropped.
    parsed: bool = False

    @property
    def prompt_tokens(self) -> int:
        return int(self.inputs["input_ids"].shape[1])


class _TokenQueue:
    """A transformers streamer: hands each new token id to the consumer thread."""

    def __init__(self) -> None:
        self.queue: Queue[list[int] | None] = Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first passes the prompt itself
            self._prompt_seen = True
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        """Called by ``generate()`` as it returns; ignored: :meth:`close` ends the stream instead."""

    def close(self) -> None:
        """End of stream, sent by the generation thread once it has recorded how generation ended."""
        self.queue.put(None)


class _StopWatch:
    """Stopping criterion: a stop string appeared, or the consumer cancelled."""

    def __init__(self, tokenizer, prompt_tokens: int, stops: tuple[str, ...], cancelled: threading.Event):
        self.tokenizer = tokenizer
        self.prompt_tokens = prompt_tokens
        self.stops = stops
        # A stop string of n characters spans at most ~3n byte-level tokens.
        self.window = 3 * max((len(s) for s in stops), default=0) + 4
        self.cancelled = cancelled

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        done = self.cancelled.is_set()
        if not done and self.stops:
            new = input_ids[0, self.prompt_tokens :][-self.window :]
            tail = self.tokenizer.decode(new, skip_special_tokens=True)
            done = any(stop in tail for stop in self.stops)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class IncrementalDecoder:
    """The text of a growing list of token ids, without re-decoding the whole list every step.

    Byte-level BPE text is the concatenation of its pieces' bytes, so once the
    decoded text ends on a whole character, later tokens cannot change it: that
    part is kept and only the tokens after it are decoded again.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._settled_text = ""
        self._settled = 0  # ids[:_settled] decode to _settled_text

    def add(self, new_ids: list[int]) -> str:
        """Append ``new_ids``; return the text of all ids so far."""
        self.ids.extend(new_ids)
        tail = self.tokenizer.decode(self.ids[self._settled :], skip_special_tokens=True)
        if tail.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return self._settled_text + tail
        self._settled_text += tail
        self._settled = len(self.ids)
        return self._settled_text


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    positions = [text.find(s) for s in stops if s in text]
    return (text[: min(positions)], True) if positions else (text, False)


class ChatStream:
    """Text pieces of an answer as they are generated; ``result`` is set when it ends.

    Iterate it once. ``cancel()`` (or leaving the loop early) stops the
    generation at the next token and frees the model.
    """

    def __init__(
        self,
        engine: Engine,
        prepared: Prepared,
        params: SamplingParams,
        on_finish: Callable[[ChatStream], None] | None = None,
    ) -> None:
        self.engine = engine
        self._on_finish = on_finish
        self.prepared = prepared
        self.params = params
        self.result: ChatResult | None = None
        self.stopped_early = False  # generation ended because of cancel()
        self._cancelled = threading.Event()
        self._tokens = _TokenQueue()
        self._error: BaseException | None = None
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._generate, name="qwen3vl-generate", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """Stop generating at the next token (a no-op once the answer is complete)."""
        if self.result is None:
            self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the generation thread has finished; True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _generate(self) -> None:
        try:
            self.engine._run_generate(self.prepared, self.params, self._tokens, self._cancelled)
            self.stopped_early = self._cancelled.is_set()
        except BaseException as exc:  # handed to the consumer, re-raised there
            self._error = _without_frames(exc)
        finally:
            # Only now may the consumer finish: if it saw the end from generate()'s own
            # streamer.end(), its closing cancel() could beat the line above and mark a
            # complete answer as stopped early (counted as "cancelled" in /health).
            self._tokens.close()
            if self._on_finish is not None:
                self._on_finish(self)

    def __iter__(self) -> Iterator[str]:
        tokenizer = self.engine.processor.tokenizer
        stops = self.params.stop
        hold = max((len(s) for s in stops), default=1) - 1  # a stop string may still be forming
        decoder = IncrementalDecoder(tokenizer)
        ids = decoder.ids
        text = ""
        sent = 0
        first_token_at = None
        stopped = False
        try:
            while (new := self._tokens.queue.get()) is not None:
                first_token_at = first_token_at or time.perf_counter()
                text, stopped = cut_at_stop(decoder.add(new), stops)
                safe = len(text) if stopped else len(text) - hold
                while safe > sent and text[safe - 1] == "\ufffd":  # half of a multi-byte character
                    safe -= 1
                if safe > sent:
                    yield text[sent:safe]
                    sent = safe
            if self._error is not None:
                raise self._error
            text, stopped = cut_at_stop(decoder.add([]), stops)
            if len(text) > sent:
                yield text[sent:]
            eos = set(self.engine.eos_token_ids)
            ended = stopped or (bool(ids) and ids[-1] in eos) or len(ids) < self.params.max_new_tokens
            now = time.perf_counter()
            calls: list[ToolCall] = []
            reasoning = None
            if self.prepared.reasoning:  # tools and JSON apply to the answer after </think>
                reasoning, content = split_reasoning(text)
                text = content or ""
            elif self.prepared.parsed:
                text = text.replace(THINK_END, "")
            if self.params.tools is not None and self.params.tools.choice != "none":
                content, calls = parse_tool_calls(text, forced=self.params.tools.forces_calls)
                text = content or ""
            self.result = ChatResult(
                text=text,
                finish_reason=("tool_calls" if calls else "stop") if ended else "length",
                usage=Usage(self.prepared.prompt_tokens, len(ids)),
                seconds=now - self._started,
                first_token_seconds=(first_token_at - self._started) if first_token_at else None,
                tool_calls=calls,
                reasoning=reasoning,
            )
        finally:
            self.cancel()  # no-op when finished; stops generation if the consumer left early

    def text(self) -> ChatResult:
        """Consume the stream and return the finished result."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result


def _without_frames(exc: BaseException) -> BaseException:
    """``exc`` with the local variables of its finished traceback frames dropped.

    A stored exception keeps its traceback, and the traceback keeps every frame's
    locals: the GPU inputs of a failed generation would stay allocated while the
    next request starts. The frames (file, line, function) stay readable.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        current = current.__cause__ or current.__context__
    return exc


def gpu_copy(inputs: Any, device: Any) -> dict[str, Any]:
    """A new dict of ``inputs``' tensors on ``device``, owned by the caller.

    transformers' ``BatchFeature.to()`` moves the tensors *in place* and returns the
    same object (transformers 5.24, feature_extraction_utils.py ``BatchFeature.to``:
    ``self.data = ...; return self``), so a prepared request would keep its GPU copy
    for as long as it lives. This leaves ``inputs`` on the CPU.
    """
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


# --------------------------------------------------------------------- engine
def choose_device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("QWEN3VL_DEVICE asks for CUDA but torch sees no GPU; use QWEN3VL_DEVICE=cpu")
    return setting


def choose_dtype(setting: str, device: str) -> torch.dtype:
    if setting != "auto":
        return DTYPES[setting]
    if device.startswith("cuda"):
        return torch.bfloat16 if bf16_supported(device) else torch.float16
    return torch.float32  # CPUs are slow and sometimes wrong in half precision


def bf16_supported(device: str) -> bool:
    """Whether ``device`` computes in bfloat16 natively (Ampere and newer), as env_check's table says.

    ``torch.cuda.is_bf16_supported()`` alone also says True where bf16 is only
    emulated (T4, V100, RTX 2080 Ti): slow there, so those cards get float16.
    """
    index = torch.device(device).index
    if index is None:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    with torch.cuda.device(index):  # it asks about the current device
        return torch.cuda.is_bf16_supported(including_emulation=False)


def choose_attention(setting: str, device: str) -> str:
    """The attention kernel: ``auto`` is PyTorch's ``sdpa``; flash_attention_2 only when asked and usable.

    flash-attn is checked with a real import: ``find_spec`` alone also matches
    flash-attn 4 and wheels built for another torch/CUDA, which fail later with
    ``undefined symbol`` (a common AutoDL failure).
    """
    if setting in ("auto", "sdpa"):
        return "sdpa"
    if setting == "eager":
        return "eager"
    if not device.startswith("cuda"):
        raise ConfigError("attn_implementation=flash_attention_2 needs a CUDA GPU; use sdpa on CPU")
    try:
        import flash_attn
        from flash_attn import flash_attn_func  # noqa: F401  (the kernel transformers calls)
    except Exception as exc:  # ImportError, OSError (undefined symbol), RuntimeError
        raise ConfigError(
            f"attn_implementation=flash_attention_2, but flash-attn does not import ({type(exc).__name__}: "
            f"{str(exc)[:200]}). Its wheel must match torch {torch.__version__} and CUDA "
            f"{torch.version.cuda}: reinstall it for them, or use --attn-implementation sdpa "
            "(PyTorch's own kernel, no install needed)."
        ) from None
    major = str(getattr(flash_attn, "__version__", "0")).split(".")[0]
    if major != "2":
        raise ConfigError(
            f"flash-attn {flash_attn.__version__} is installed; transformers' flash_attention_2 needs "
            "flash-attn 2.x. Install a 2.x wheel that matches torch, or use --attn-implementation sdpa."
        )
    return "flash_attention_2"


# The model class of each family (config.json "model_type"); both read the same processor inputs.
MODEL_CLASSES = {
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "qwen3_5": "Qwen3_5ForConditionalGeneration",
}


def model_class_for(path: Path) -> tuple[Any, bool]:
    """The transformers class that loads the checkpoint in ``path``, and whether it is FP8."""
    import json

    import transformers

    config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    model_type = config.get("model_type", "qwen3_vl")
    if model_type not in MODEL_CLASSES:
        raise ConfigError(
            f"{path} holds a {model_type!r} model; this tutorial loads {', '.join(MODEL_CLASSES)} "
            "(Qwen3-VL and Qwen3.5). Point QWEN3VL_MODEL at one of those."
        )
    quant = config.get("quantization_config") or {}
    return getattr(transformers, MODEL_CLASSES[model_type]), quant.get("quant_method") == "fp8"


def fp8_note(device: str) -> str | None:
    """What transformers does with an FP8 checkpoint here (None: it runs in FP8)."""
    from helpers.models import fp8_supported

    if device.startswith("cuda") and fp8_supported(torch.cuda.get_device_capability(device)):
        return None
    where = (
        "CPU"
        if not device.startswith("cuda")
        else f"GPU（计算能力 {torch.cuda.get_device_capability(device)}）"
    )
    return (
        f"⚠️ FP8 权重在这台 {where} 上不能直接计算：transformers 会把它们解压回 bf16，"
        "显存和速度都和 BF16 版一样。"
        "要省显存：用 vLLM（notebook 07；计算能力 ≥ 7.5 时以 FP8 存权重，"
        "≥ 8.9 的 RTX 4090 / L4 / H100 还用 FP8 计算）；"
        "否则直接下载 BF16 版（去掉 -FP8）。"
    )


class EngineClosed(RuntimeError):
    """The engine was closed with :meth:`Engine.close`."""


def loading_message(model: str, path: Path, device: str, dtype: torch.dtype) -> str:
    """What is about to load and how big it is, printed before transformers' shard bar."""
    from helpers.costs import format_bytes

    weights = sum(p.stat().st_size for p in Path(path).glob("*.safetensors"))
    kind = str(dtype).removeprefix("torch.")
    return (
        f"⏳ 正在加载 {model}：权重文件 {format_bytes(weights)}（{path}）→ {device}，{kind}。"
        "真实的 4B 模型要几十秒，下面的进度条是 transformers 逐个读取权重分片"
    )


class _Shared:
    """What every copy of one loaded engine shares (``with_settings``, ``server.create_app``).

    ``close()`` on any copy closes them all and drops every copy's reference to the
    weights: a copy that kept them would keep the GPU memory too.
    """

    def __init__(self) -> None:
        self.closed = False
        self.copies: list[weakref.ref[Engine]] = []

    def engines(self) -> list[Engine]:
        return [e for ref in self.copies if (e := ref()) is not None]


@dataclass
class Engine:
    """A loaded model + processor and the settings that govern its inputs."""

    model: Any
    processor: Any
    settings: Settings
    model_path: Path
    device: str
    dtype: torch.dtype
    attention: str
    load_seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _shared: _Shared = field(default_factory=_Shared, repr=False)  # shared by with_settings copies

    def __post_init__(self) -> None:
        self._shared.copies.append(weakref.ref(self))
        if self.model is not None and not self._shared.closed:
            from helpers.costs import hold_on_simulated_card

            # On QWEN3VL_SIMULATE_GPU's card: held for as long as the model object lives.
            hold_on_simulated_card(self.model, self.settings)

    @classmethod
    def load(cls, settings: Settings | None = None, verbose: bool = True, **overrides: Any) -> Engine:
        """Load the configured model (``settings`` or ``QWEN3VL_*`` variables, plus overrides)."""
        from transformers import AutoProcessor

        settings = settings or Settings.from_env()
        if overrides:
            settings = settings.replace(**overrides)
        path = settings.resolve_model_path()
        device = choose_device(settings.device)
        dtype = choose_dtype(settings.dtype, device)
        attention = choose_attention(settings.attn_implementation, device)
        from helpers.costs import check_gpu_memory, simulated_probe

        if device.startswith("cuda") or (settings.device != "cpu" and simulated_probe() is not None):
            # A clear message instead of an out-of-memory halfway through (also on the simulated card).
            check_gpu_memory(settings)
        if verbose:
            print(loading_message(settings.model, path, device, dtype), flush=True)
        start = time.perf_counter()
        model_class, fp8 = model_class_for(path)
        if fp8 and verbose and (note := fp8_note(device)):
            print(note)
        processor = AutoProcessor.from_pretrained(path)
        model = model_class.from_pretrained(
            path, dtype=dtype, attn_implementation=attention, device_map=device
        ).eval()
        engine = cls(model, processor, settings, path, device, dtype, attention, time.perf_counter() - start)
        if verbose:
            print(engine.describe())
        return engine

    def with_settings(self, **changes: Any) -> Engine:
        """The same loaded model under other settings (e.g. other media folders).

        The copy shares the lock, the weights and the closed state: ``close()`` on
        either one frees the weights of both.
        """
        return dataclasses.replace(self, settings=self.settings.replace(**changes))

    def close(self) -> None:
        """Free the weights, caches and GPU memory. Later calls raise :class:`EngineClosed`.

        A notebook ends with this so that the next notebook (or the server it
        starts) finds the GPU free; shut the kernel down too, to free the rest.
        """
        with self._lock:  # waits for a running generation
            if self._shared.closed:
                return
            self._shared.closed = True
            for engine in self._shared.engines():  # every copy: one that kept the weights keeps the memory
                engine.model = engine.processor = None
                for cached in ("_static_info", "_special_tokens", "grammars"):  # grammars: the cache too
                    engine.__dict__.pop(cached, None)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @property
    def closed(self) -> bool:
        return self._shared.closed

    def _check_open(self) -> None:
        if self._shared.closed:
            raise EngineClosed(
                "this engine was closed with engine.close(); load a new one with Engine.load()"
            )

    @property
    def max_model_len(self) -> int:
        """Tokens per request (prompt + answer): the setting, never above the model's own limit."""
        self._check_open()
        text_config = getattr(self.model.config, "text_config", self.model.config)
        limit = getattr(text_config, "max_position_embeddings", None) or self.settings.max_model_len
        return min(self.settings.max_model_len, int(limit))

    # ------------------------------------------------------------- facts
    @property
    def is_demo(self) -> bool:
        return self.settings.is_demo

    @property
    def model_name(self) -> str:
        return self.settings.model

    @functools.cached_property
    def thinking(self) -> bool:
        """Whether this model's template opens ``<think>``: its answers start with reasoning."""
        self._check_open()
        probe = [{"role": "user", "content": "hi"}]
        return opens_reasoning(
            self.processor.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        )

    @property
    def eos_token_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        return list(eos) if isinstance(eos, (list, tuple)) else [eos]

    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    @functools.cached_property
    def _static_info(self) -> dict[str, Any]:
        facts: dict[str, Any] = {
            "model": self.model_name,
            "model_path": str(self.model_path),
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
            "attention": self.attention,
            "max_model_len": self.max_model_len,
            "demo": self.is_demo,
            "weights_gib": round(self.weight_bytes() / 1024**3, 3),
            "thinking": self.thinking,
            "sampling_defaults": SamplingParams.defaults(self.settings),
        }
        if self.device.startswith("cuda"):
            facts["gpu"] = torch.cuda.get_device_name(self.device)
        return facts

    def info(self) -> dict[str, Any]:
        """What is loaded, for banners and ``/health`` (cheap: /health calls it during generation)."""
        self._check_open()
        facts = dict(self._static_info)
        if self.device.startswith("cuda"):
            facts["gpu_memory_allocated_gib"] = round(torch.cuda.memory_allocated(self.device) / 1024**3, 2)
        return facts

    def describe(self) -> str:
        info = self.info()
        lines = [
            f"模型 {info['model']} 已加载（{self.load_seconds:.1f} s）",
            f"  路径: {info['model_path']}",
            f"  设备: {info['device']}  精度: {info['dtype']}  注意力实现: {info['attention']}",
            f"  权重占用: {info['weights_gib']:.3f} GiB",
        ]
        if "gpu" in info:
            lines.append(f"  GPU: {info['gpu']}，已分配显存 {info['gpu_memory_allocated_gib']} GiB")
        defaults = ", ".join(f"{k}={v}" for k, v in info["sampling_defaults"].items() if k != "source")
        kind = "Thinking（先推理，再回答：reasoning_content + content）" if info["thinking"] else "Instruct"
        lines.append(f"  类型: {kind}")
        lines.append(f"  默认采样（请求没给时）: {defaults}")
        if self.is_demo:
            lines.append("  ⚠️ 演示模型（随机权重）：回答是噪声，只用来演示流程")
        return "\n".join(lines)

    # ------------------------------------------------------------- inputs
    @functools.cached_property
    def _special_tokens(self) -> list[str]:
        return special_tokens(self.processor.tokenizer)

    @functools.cached_property
    def grammars(self) -> Grammars:
        """The grammar compiler and cache for this model's vocabulary (built on first use, ~1-4 s)."""
        return Grammars.for_model(self.model, self.processor.tokenizer)

    def prepare(self, messages: Any, params: SamplingParams | None = None) -> Prepared:
        """Normalise ``messages``, load their media and build model inputs (no generation).

        The inputs stay on the CPU until generation starts, so requests waiting in
        the server's queue hold no GPU memory. Text that cannot fit the context is
        refused before anything is tokenized or loaded. With ``params`` that ask for
        JSON or tool calls, the tools go into the prompt (through the model's chat
        template) and the grammar is compiled here (cached per schema).
        """
        self._check_open()
        limit = self.max_model_len
        if (chars := text_length(messages)) > MAX_CHARS_PER_TOKEN * limit:
            raise RequestError(
                f"the messages hold {chars:,} characters of text; this server's context is {limit:,} tokens,"
                f" so it refuses more than {MAX_CHARS_PER_TOKEN * limit:,} characters without tokenizing"
                " them. Shorten the text.",
                param="messages",
                code="context_length_exceeded",
            )
        qwen_messages, hidden = shield_markup(
            normalize_messages(messages, self.settings), self._special_tokens
        )
        tool_request = params.tools if params is not None else None
        if tool_request is not None and self.model.config.model_type == "qwen3_5":
            raise RequestError(
                "tools are not supported with Qwen3.5 on this server: Qwen3.5 writes tool calls in the"
                " qwen3_coder XML format, which helpers.tools does not parse. Use a Qwen3-VL model, or vLLM"
                " (notebook 07) with --enable-auto-tool-choice --tool-call-parser qwen3_coder",
                param="tools",
            )
        template_tools = tool_request.template_tools() if tool_request is not None else None
        enable_thinking = params.enable_thinking if params is not None else None
        switch = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
        refuse_markup(
            template_tools, [m.get("tool_calls") for m in qwen_messages], specials=self._special_tokens
        )
        prompt = self.processor.apply_chat_template(
            qwen_messages, tools=template_tools, tokenize=False, add_generation_prompt=True, **switch
        )
        # process_vision_info's results, with videos at the size they were decoded to (no second resize)
        images, videos, video_kwargs = vision_inputs(qwen_messages)
        metadata = None
        if videos:
            videos, metadata = map(list, zip(*videos, strict=True))
            video_kwargs["cap_pixels_per_frame"] = True  # the qwen-vl-utils behaviour; silences a warning
        inputs = self.processor(
            text=[prompt],
            images=images,
            videos=videos,
            video_metadata=metadata,
            do_resize=False,  # already resized to the budgets by helpers.messages
            return_tensors="pt",
            **video_kwargs,
        )
        inputs = restore_markup(inputs, hidden, self.processor.tokenizer)
        for text in hidden:  # the readable prompt shows what the user typed
            prompt = prompt.replace(PLACEHOLDER, text, 1)
        return Prepared(
            inputs=inputs,
            prompt=prompt,
            grammar=self._grammar(params),
            # enable_thinking false: no split, as vLLM's qwen3 parser does (its reasoning stays in content)
            reasoning=opens_reasoning(prompt) and enable_thinking is not False,
            parsed=self.thinking,
        )

    def _grammar(self, params: SamplingParams | None) -> Any:
        """The compiled grammar that ``params`` ask for: a tool call's shape wins over response_format."""
        if params is None:
            return None
        if params.tools is not None and (tag := params.tools.structural_tag()) is not None:
            return self.grammars.compile_structural_tag(tag)
        if params.response_format is not None:
            return self.grammars.compile(params.response_format)
        return None

    def check_context(self, prepared: Prepared, params: SamplingParams) -> SamplingParams:
        """Refuse a prompt + ``max_tokens`` beyond the context; shrink a default ``max_tokens`` to fit.

        Raises :class:`RequestError` (400, ``context_length_exceeded``) before generating,
        with the numbers, as OpenAI and vLLM do.
        """
        limit, prompt = self.max_model_len, prepared.prompt_tokens
        room = limit - prompt
        if room >= params.max_new_tokens:
            return params
        if room >= 1 and not params.max_tokens_given:
            return dataclasses.replace(params, max_new_tokens=room)
        raise RequestError(
            f"this model's maximum context length is {limit} tokens, but the request needs "
            f"{prompt + params.max_new_tokens} tokens ({prompt} in the messages, text and images/videos, "
            f"+ {params.max_new_tokens} for the answer). Shorten the messages, send fewer or smaller "
            "images/videos, or lower max_tokens.",
            param="messages",
            code="context_length_exceeded",
        )

    # --------------------------------------------------------- generation
    def stream_chat(self, messages: Any, **params: Any) -> ChatStream:
        """Start answering ``messages``; iterate the result for text pieces.

        Parameters (all optional): ``max_new_tokens``, ``temperature`` (0 = greedy),
        ``top_p``, ``top_k``, ``seed``, ``stop``, ``presence_penalty``, ``frequency_penalty``,
        ``repetition_penalty``; structured output: ``response_format`` (OpenAI's
        ``{"type": "json_schema", "json_schema": {"name", "schema"}}`` or ``{"type": "json_object"}``),
        ``tools``, ``tool_choice``, ``parallel_tool_calls`` (see :mod:`helpers.tools`). The pieces
        are the raw answer (tool calls included as ``<tool_call>`` text); ``result`` has them
        parsed into ``tool_calls``. Bad input raises :class:`RequestError` before anything
        is generated.
        """
        self._check_open()
        checked = SamplingParams.build(self.settings, **params)
        return self.start(self.prepare(messages, checked), checked)

    def start(
        self,
        prepared: Prepared,
        params: SamplingParams,
        on_finish: Callable[[ChatStream], None] | None = None,
    ) -> ChatStream:
        """Start generating for inputs already prepared (the server prepares before queueing).

        ``on_finish`` runs in the generation thread once the model is free again.
        """
        self._check_open()
        return ChatStream(self, prepared, params=self.check_context(prepared, params), on_finish=on_finish)

    def chat(self, messages: Any, **params: Any) -> ChatResult:
        """Answer ``messages`` and return text, tool calls, finish reason and token usage."""
        return self.stream_chat(messages, **params).text()

    def _constraint(self, prepared: Prepared) -> list[Any]:
        """The grammar's logits processor (first, so penalties and sampling only see allowed tokens).

        After a ``<think>`` prompt the grammar starts once the model has written
        ``</think>``: the reasoning is free text, the answer is constrained (vLLM
        does the same with a reasoning parser).
        """
        if prepared.grammar is None:
            return []
        processor = self.grammars.logits_processor(prepared.grammar)
        if prepared.reasoning:
            end = self.processor.tokenizer.convert_tokens_to_ids(THINK_END)
            processor = AfterToken(processor, end, prepared.prompt_tokens)
        return [processor]

    def _run_generate(
        self, prepared: Prepared, params: SamplingParams, streamer: _TokenQueue, cancelled: threading.Event
    ) -> None:
        from transformers import LogitsProcessorList, StoppingCriteriaList

        watch = _StopWatch(self.processor.tokenizer, prepared.prompt_tokens, params.stop, cancelled)
        out_of_memory = False
        with self._lock:  # one generation at a time on this model (Qwen3-VL keeps rope_deltas on it)
            if cancelled.is_set():
                return  # the client left while waiting: no prefill at all
            self._check_open()
            if params.seed is not None:
                torch.manual_seed(params.seed)
            try:
                with torch.inference_mode():
                    inputs = gpu_copy(prepared.inputs, self.model.device)  # on the GPU only while generating
                    self.model.generate(
                        **inputs,
                        **params.generate_kwargs(),
                        logits_processor=LogitsProcessorList(
                            self._constraint(prepared) + params.logits_processors(prepared.prompt_tokens)
                        ),
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([watch]),
                    )
            except torch.OutOfMemoryError:
                out_of_memory = True  # freed below: inside `except` the traceback still pins the tensors
            finally:
                inputs = None
            if out_of_memory:
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        if out_of_memory:
            raise RequestError(
                "the GPU ran out of memory for this request: send fewer or smaller images/videos, "
                "lower max_pixels / fps, or lower max_tokens",
                status_code=413,
                code="out_of_memory",
            )
