"""The learner-path rules every tutorial notebook keeps (structure only; nbval executes them)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
EXPECTED = [
    "00_environment_check",
    "01_download_model",
    "02_first_inference",
    "03_inference_video",
    "04_vision_tasks",
    "05_fastapi_server",
    "06_api_clients",
]
LOADS_A_MODEL = {"02_first_inference", "03_inference_video", "04_vision_tasks"}
STARTS_A_SERVER = {"05_fastapi_server", "06_api_clients"}


def cells(name: str) -> list:
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4).cells


def code(name: str) -> list[str]:
    return [c.source for c in cells(name) if c.cell_type == "code"]


def test_the_learner_path_is_numbered_in_reading_order():
    found = sorted(p.stem for p in NOTEBOOKS.glob("0[0-6]_*.ipynb"))
    assert found == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_each_notebook_is_one_sitting_and_committed_without_outputs(name):
    nb = cells(name)
    assert len(nb) <= 50, f"{name} has {len(nb)} cells"
    for cell in nb:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs not stripped"


@pytest.mark.parametrize("name", sorted(LOADS_A_MODEL | STARTS_A_SERVER))
def test_notebooks_that_need_a_model_open_with_the_demo_switch_then_the_gpu_check(name):
    sources = code(name)
    switch = next(i for i, s in enumerate(sources) if "%env QWEN3VL_MODEL=demo" in s)
    assert sources[switch].lstrip().startswith("# %env QWEN3VL_MODEL=demo"), "the switch starts commented out"
    gpu_check = next(i for i, s in enumerate(sources) if "check_gpu_memory(" in s)
    first_load = next(
        i for i, s in enumerate(sources) if re.search(r"Engine\.load\(|from_pretrained\(|start_server\(", s)
    )
    assert switch < gpu_check <= first_load


@pytest.mark.parametrize("name", sorted(LOADS_A_MODEL))
def test_notebooks_that_load_a_model_close_it_and_say_to_shut_the_kernel_down(name):
    sources = code(name)
    closing = [i for i, s in enumerate(sources) if "engine.close()" in s]
    assert closing, name
    # Nothing uses the model after it is closed (a server section may follow: it loads its own),
    # and the notebook's last words tell the learner to shut the kernel down.
    after = "\n".join(sources[closing[-1] + 1 :])
    assert not re.search(r"\bengine\.(chat|stream_chat|prepare)|\bask\(", after), name
    assert "Shut Down Kernel" in sources[-1] or "Shut Down Kernel" in sources[closing[-1]]


@pytest.mark.parametrize("name", sorted(STARTS_A_SERVER))
def test_server_notebooks_stop_their_server(name):
    assert "stop_server(" in code(name)[-1]


def test_first_inference_shows_the_model_cards_code_inline():
    source = "\n".join(code("02_first_inference"))
    for call in (
        "Qwen3VLForConditionalGeneration.from_pretrained(",
        'attn_implementation="sdpa"',
        "AutoProcessor.from_pretrained(model_path)",
        'tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"',
        "image_patch_size=16, return_video_kwargs=True, return_video_metadata=True",
        "do_resize=False",
        'convert_tokens_to_ids("<|image_pad|>")',
        "model.generate(",
    ):
        assert call in source, call
    assert "151655" not in source  # token ids come from the tokenizer


@pytest.mark.parametrize("name", EXPECTED)
def test_model_answers_are_printed_through_the_demo_aware_display(name):
    # A raw print of an answer is how demo noise gets mistaken for model output.
    for source in code(name):
        for line in source.splitlines():
            raw = re.search(r"print\(.*(\.text\b|\[.response.\]|message\.content)", line)
            assert not raw or re.search(r"==|!=|len\(", line), (name, line)  # comparisons and sizes are fine
