"""Split a Thinking model's answer into ``reasoning_content`` and ``content`` as vLLM's ``qwen3`` parser does.

A Thinking model's chat template ends the prompt with ``<think>\\n``, so what
the model writes is reasoning, then ``</think>``, then the answer. vLLM 0.32's
``--reasoning-parser qwen3`` (``vllm/parser/qwen3.py``, a state machine that
starts in its reasoning state) splits it so; we follow the same rules, checked
against that parser on the same strings (tests/test_reasoning.py):

- everything before the first ``</think>`` is reasoning; a ``<think>`` inside it
  is dropped (the model sometimes repeats the one the template opened);
- everything after it is the answer; a further ``</think>`` there is dropped;
- no ``</think>`` at all (the answer was cut by ``max_tokens`` while thinking):
  all of it is reasoning and the answer is empty (``content`` null);
- nothing is stripped: the newlines around ``</think>`` stay where they are;
- an empty part is ``None``.

Whether an answer opens with reasoning is decided from the prompt the template
rendered (:func:`opens_reasoning`), so Qwen3.5 with ``enable_thinking=False``
(whose template closes the block itself) and every Instruct model are left
untouched, as vLLM leaves them without the parser.
"""

from __future__ import annotations

from collections.abc import Iterator

THINK_START = "<think>"
THINK_END = "</think>"

REASONING = "reasoning"
CONTENT = "content"


def opens_reasoning(prompt: str) -> bool:
    """True when the rendered prompt leaves a ``<think>`` block open for the model to write into."""
    return prompt.rstrip().endswith(THINK_START)


def split_reasoning(text: str) -> tuple[str | None, str | None]:
    """``(reasoning, content)`` of a whole answer that began inside ``<think>``."""
    reasoning, found, content = text.partition(THINK_END)
    reasoning = reasoning.replace(THINK_START, "")
    content = content.replace(THINK_END, "") if found else ""
    return reasoning or None, content or None


def _partial_suffix(text: str, *tags: str) -> int:
    """Length of the longest end of ``text`` that could still grow into one of ``tags``."""
    best = 0
    for tag in tags:
        for n in range(min(len(tag) - 1, len(text)), 0, -1):
            if text.endswith(tag[:n]):
                best = max(best, n)
                break
    return best


class ReasoningStream:
    """The same split, piece by piece, for streamed answers.

    ``feed(piece)`` then ``finish()`` yield ``("reasoning", text)`` and
    ``("content", text)`` events, every reasoning event before the first content
    event; text that may still become ``<think>`` / ``</think>`` is held back
    until it is known. Joined, the events equal :func:`split_reasoning`.
    """

    def __init__(self, state: str = REASONING) -> None:
        self.state = state  # CONTENT: thinking turned off for this request (only stray </think> dropped)
        self._buffer = ""

    def feed(self, piece: str) -> Iterator[tuple[str, str]]:
        self._buffer += piece
        while self.state == REASONING:
            end = self._buffer.find(THINK_END)
            if end < 0:
                break
            yield from self._emit(REASONING, self._buffer[:end].replace(THINK_START, ""))
            self._buffer = self._buffer[end + len(THINK_END) :]
            self.state = CONTENT
        if self.state == REASONING:
            text = self._buffer.replace(THINK_START, "")
            keep = _partial_suffix(text, THINK_START, THINK_END)
            yield from self._emit(REASONING, text[: len(text) - keep])
            self._buffer = text[len(text) - keep :]
        else:
            text = self._buffer.replace(THINK_END, "")
            keep = _partial_suffix(text, THINK_END)
            yield from self._emit(CONTENT, text[: len(text) - keep])
            self._buffer = text[len(text) - keep :]

    def finish(self) -> Iterator[tuple[str, str]]:
        """The text held back at the end of the answer (a tag that never completed is text)."""
        yield from self._emit(self.state, self._buffer)
        self._buffer = ""

    @staticmethod
    def _emit(kind: str, text: str) -> Iterator[tuple[str, str]]:
        if text:
            yield kind, text
