"""Chat markup typed by a user is text: special tokens inside message text never become control tokens.

A prompt is the chat template's control tokens (``<|im_start|>``, ``<|image_pad|>``,
...) around the messages' text. Tokenizers match special tokens anywhere in a
string, so a user who types ``<|im_end|>\\n<|im_start|>system\\n...`` would open a
real system turn (prompt injection), and ``<|image_pad|>`` without an image makes
the processor fail. Escaping the characters would change the text the model sees.

Instead, every text that contains a special token is swapped for one placeholder
token before the template and the processor run (so they see no stray markup),
then each stretch of text between two real control tokens that held a
placeholder is tokenized again, with the user's characters back in place and
special-token matching off. The result is exactly the ids of "template tokens +
the user's characters as ordinary text".

That second tokenization uses a private copy of the tokenizer's Rust backend
(:func:`text_tokenizer`), never the shared tokenizer: transformers implements
``split_special_tokens=True`` by flipping a switch on the shared backend, so with
requests prepared in several threads one request's switch changed what another
request's prompt became (control tokens split into text, or typed markup read as
control tokens), or raised "Already borrowed".
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import Any

import torch

from helpers.errors import RequestError

# A special token that neither the chat template nor the processor ever emits.
PLACEHOLDER = "<|vision_pad|>"


def special_tokens(tokenizer) -> list[str]:
    """The special tokens a tokenizer would match inside text (longest first)."""
    found = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    return sorted(found, key=len, reverse=True)


def _texts(messages: list[dict[str, Any]]) -> Iterable[tuple[dict[str, Any], str]]:
    """(holder, key) for every text in Qwen-native messages: string contents and text parts."""
    for message in messages:
        if isinstance(message.get("content"), str):
            yield message, "content"
        elif isinstance(message.get("content"), list):
            for part in message["content"]:
                if part.get("type") == "text" and isinstance(part.get("text"), str):
                    yield part, "text"


def text_length(messages: Any) -> int:
    """Characters of text in raw (not yet validated) messages, counted without tokenizing."""
    total = 0
    for message in messages if isinstance(messages, (list, tuple)) else ():
        content = message.get("content") if isinstance(message, dict) else getattr(message, "content", None)
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, (list, tuple)):
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                total += len(text) if isinstance(text, str) else 0
    return total


def shield_markup(
    messages: list[dict[str, Any]], specials: list[str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """A copy of ``messages`` where each text holding a special token is the placeholder; and those texts."""
    shielded = [
        {
            **m,
            "content": [dict(p) for p in m["content"]]
            if isinstance(m.get("content"), list)
            else m.get("content"),
        }
        for m in messages
    ]
    hidden: list[str] = []
    for holder, key in _texts(shielded):
        text = holder[key]
        if any(token in text for token in specials):
            hidden.append(text)
            holder[key] = PLACEHOLDER
    return shielded, hidden


_TEXT_TOKENIZERS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_TEXT_TOKENIZERS_LOCK = threading.Lock()


def text_tokenizer(tokenizer) -> Any:
    """A copy of ``tokenizer``'s fast (Rust) backend that reads special tokens as text; one per tokenizer.

    Equivalent to ``tokenizer(text, split_special_tokens=True)``, but the shared
    tokenizer is never changed: in transformers 5.x that option sets
    ``backend_tokenizer.encode_special_tokens`` on the shared backend and leaves it
    set. The copy is only read after it is built, so threads may use it at once.
    """
    with _TEXT_TOKENIZERS_LOCK:
        copy = _TEXT_TOKENIZERS.get(tokenizer)
        if copy is None:
            from tokenizers import Tokenizer

            copy = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # ~0.5 s, once
            copy.encode_special_tokens = True
            _TEXT_TOKENIZERS[tokenizer] = copy
        return copy


def restore_markup(inputs: Any, hidden: list[str], tokenizer) -> Any:
    """Put the hidden texts back into ``inputs`` as ordinary-text tokens (see the module docstring)."""
    if not hidden:
        return inputs
    placeholder_id = tokenizer.convert_tokens_to_ids(PLACEHOLDER)
    control = set(tokenizer.all_special_ids) - {placeholder_id}
    ids: list[int] = inputs["input_ids"][0].tolist()
    if ids.count(placeholder_id) != len(hidden):
        raise RequestError("message text contains chat markup that could not be kept as text")
    as_text = text_tokenizer(tokenizer)
    texts = iter(hidden)
    new_ids: list[int] = []
    source: list[int] = []  # for each new id: its index in the old ids, or -1 for re-tokenized text
    start = 0
    for end in [i for i, t in enumerate(ids) if t in control] + [len(ids)]:
        stretch = ids[start:end]
        if placeholder_id in stretch:
            pieces, run = [], []
            for token in stretch:
                if token == placeholder_id:
                    pieces.append(tokenizer.decode(run, clean_up_tokenization_spaces=False))
                    pieces.append(next(texts))
                    run = []
                else:
                    run.append(token)
            pieces.append(tokenizer.decode(run, clean_up_tokenization_spaces=False))
            retokenized = as_text.encode("".join(pieces), add_special_tokens=False).ids
            new_ids += retokenized
            source += [-1] * len(retokenized)
        else:
            new_ids += stretch
            source += range(start, end)
        if end < len(ids):
            new_ids.append(ids[end])
            source.append(end)
        start = end + 1
    index = torch.tensor(source)
    length = len(ids)
    for key, value in list(inputs.items()):
        if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape == (1, length):
            fill = 1 if key == "attention_mask" else 0
            kept = value[0, index.clamp(min=0)]
            inputs[key] = torch.where(index >= 0, kept, torch.full_like(kept, fill)).unsqueeze(0)
    inputs["input_ids"] = torch.tensor([new_ids], dtype=inputs["input_ids"].dtype)
    return inputs
