"""The automatic dtype on a GPU: bfloat16 only where the card computes it natively (no GPU needed)."""

from __future__ import annotations

import pytest
import torch

from helpers.engine import choose_dtype


def card(native: bool):
    """torch.cuda.is_bf16_supported of a card: a T4 / V100 / 2080 Ti emulates bf16, an RTX 4090 has it."""

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return native or including_emulation

    return is_bf16_supported


@pytest.mark.parametrize(
    ("native", "expected"), [(True, torch.bfloat16), (False, torch.float16)], ids=["rtx4090", "t4"]
)
def test_auto_dtype_on_a_gpu_ignores_emulated_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", card(native))
    assert choose_dtype("auto", "cuda") == expected
    assert choose_dtype("bfloat16", "cuda") == torch.bfloat16  # asked for explicitly: given
