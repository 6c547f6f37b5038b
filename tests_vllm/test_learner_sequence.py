"""The learner's path 02 -> 08 on one simulated card, with every kernel left open until the end.

A learner who never shuts a kernel down still has every notebook's kernel
running when 07 starts vLLM. Each notebook ends by closing its model and
stopping its servers; this runs them in order in kernels that stay open and
checks on the simulated card (helpers/simulated_gpu.py) that the whole
sequence fits the 24 GB RTX 4090. On an 80 GB A100 only 05 and 07 run: there
notebook 07's two servers get the full context. Slow: seven notebooks, then
two, and vLLM started once per card (~2.5 and ~1.5 min on two cores).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nbclient import NotebookClient

from helpers import simulated_gpu
from helpers.run_notebooks import runnable

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SEQUENCE = [
    "02_first_inference",
    "03_inference_video",
    "04_vision_tasks",
    "05_fastapi_server",
    "06_api_clients",
    "07_scale_out_vllm",
    "08_choosing_a_model",
]
# The 4090 runs the whole path; the A100 only what differs there (07's two servers), with
# 05 for our server's full-context reservation to compare them with.
PATHS = {"rtx4090": SEQUENCE, "a100-80g": ["05_fastapi_server", "07_scale_out_vllm"]}
FIGURES = Path(__file__).resolve().parent.parent / "build" / "simulated-gpu"


@pytest.mark.parametrize("card_name", list(PATHS))
def test_the_learner_sequence_fits_the_card_with_kernels_left_open(card_name, monkeypatch, tmp_path):
    from helpers.vllm_server import vllm_python

    try:
        vllm_python()
    except FileNotFoundError as exc:
        pytest.skip(f"notebook 07 needs vLLM: {exc}")
    monkeypatch.setenv("QWEN3VL_MODEL", "demo")
    monkeypatch.setenv("QWEN3VL_SIMULATE_GPU", card_name)
    monkeypatch.setenv("QWEN3VL_SIMULATE_GPU_DIR", str(tmp_path / "registry"))
    card = simulated_gpu.card()
    assert card is not None
    clients: list[NotebookClient] = []
    peaks = {}
    try:
        for name in PATHS[card_name]:
            simulated_gpu.reset_peak()
            client = NotebookClient(
                runnable(NOTEBOOKS / f"{name}.ipynb"),  # without 07's two-GPU cell
                timeout=900,
                kernel_name="python3",
                shutdown_kernel="immediate",
                resources={"metadata": {"path": str(NOTEBOOKS)}},
            )
            clients.append(client)
            client.execute(cleanup_kc=False)  # the kernel stays open, as a learner leaves it
            peaks[name] = simulated_gpu.peak()
            still_held = simulated_gpu.holders()
            assert still_held == [], f"{name} left on the card: {still_held}"
    finally:
        for client in clients:
            if client.km is not None:
                client._cleanup_kernel()  # nbclient's own (sync) shutdown of the kernel it started
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / f"peaks-{card_name}.json").write_text(
        json.dumps({"card": card.label, "total": card.total, "peaks": peaks}, ensure_ascii=False, indent=2)
    )
    for name, peak in peaks.items():
        print(f"{card.label} {name}: {peak['bytes'] / 1024**3:.1f} GiB: {'; '.join(peak['holders'])}")
    assert all(0 < peak["bytes"] <= card.total for peak in peaks.values()), peaks
    assert len(peaks["07_scale_out_vllm"]["holders"]) == 2  # both servers at once, inside the card
    ours_full_context = peaks["05_fastapi_server"]["bytes"]  # our server alone, 32768 tokens
    if card_name == "a100-80g":  # the bigger card gives both servers the full context
        assert ours_full_context in peaks["07_scale_out_vllm"]["holder_bytes"]
    else:  # the 4090 fits both only with a shorter one
        assert ours_full_context not in peaks["07_scale_out_vllm"]["holder_bytes"]
