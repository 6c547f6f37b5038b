"""Exercises come before a notebook frees its model or server, with reference answers that nbval runs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CLOSING = {
    "02_first_inference": "engine.close()",
    "03_inference_video": "engine.close()",
    "04_vision_tasks": "engine.close()",
    "05_fastapi_server": "stop_server(api_server)",
}


@pytest.mark.parametrize("name", sorted(CLOSING))
def test_exercises_and_their_collapsed_reference_answers_come_before_the_closing_cell(name):
    cells = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4).cells
    exercises = next(i for i, c in enumerate(cells) if c.cell_type == "markdown" and "## 练习" in c.source)
    answers = next(
        i for i, c in enumerate(cells) if c.cell_type == "code" and c.source.startswith("# 参考答案")
    )
    closing = next(i for i, c in enumerate(cells) if c.cell_type == "code" and CLOSING[name] in c.source)
    assert exercises < answers < closing
    assert cells[answers].metadata.get("jupyter", {}).get("source_hidden") is True
    assert "nbval-skip" not in cells[answers].metadata.get("tags", [])  # CI runs every reference answer


def test_the_tool_round_trip_goes_through_notebook_06s_server_and_04_starts_none():
    def source(name):
        return "\n".join(c.source for c in nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4).cells)

    assert "start_server(" not in source("04_vision_tasks")
    assert 'tool_choice="required"' in source("06_api_clients") and '"role": "tool"' in source(
        "06_api_clients"
    )
