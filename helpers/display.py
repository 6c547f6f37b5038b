"""Show answers in notebooks, with a banner that makes demo-model output unmistakable."""

from __future__ import annotations

import sys
import unicodedata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from helpers.engine import ChatResult, ChatStream

DEMO_BANNER = "🧪 演示模型输出（随机权重，内容是噪声，只说明流程能跑通）"
REAL_BANNER = "🤖 模型回答"


def banner(demo: bool) -> str:
    return DEMO_BANNER if demo else REAL_BANNER


def show_answer(result: ChatResult | str, demo: bool, usage: bool = True) -> None:
    """Print an answer under its banner, plus finish reason and token usage when known."""
    text = result if isinstance(result, str) else result.text
    print(banner(demo))
    print(text)
    if usage and not isinstance(result, str):
        u = result.usage
        print(
            f"—— finish_reason={result.finish_reason}，tokens：输入 {u.prompt_tokens} + 输出 "
            f"{u.completion_tokens} = {u.total_tokens}，用时 {result.seconds:.2f} s"
        )


def print_stream(stream: ChatStream, demo: bool) -> ChatResult:
    """Print a streamed answer piece by piece as it is generated; return the finished result."""
    print(banner(demo))
    for piece in stream:
        print(piece, end="", flush=True)
    sys.stdout.write("\n")
    result = stream.result
    assert result is not None
    first, tokens = result.first_token_seconds or 0.0, result.usage.completion_tokens
    print(f"—— 首个 token {first:.2f} s，共 {tokens} 个 token，{result.seconds:.2f} s")
    return result


def markdown_table(rows: list[dict]):
    """A list of dicts (same keys) as a Markdown table, rendered by Jupyter's ``display``."""
    from IPython.display import Markdown

    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(row[key]) for key in head) + " |" for row in rows]
    return Markdown("\n".join(lines))


def display_width(text: str) -> int:
    """Columns ``text`` takes in a terminal (CJK and emoji are two wide), for aligned tables."""
    width = 0
    for ch in text:
        if ch == "\ufe0f":  # emoji presentation selector: the sign before it becomes two wide
            width += 1
        elif unicodedata.combining(ch):
            continue
        else:
            width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def pad_to_width(text: str, width: int) -> str:
    """``text`` followed by spaces up to ``width`` terminal columns."""
    return text + " " * (width - display_width(text))
