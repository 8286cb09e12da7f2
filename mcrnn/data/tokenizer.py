"""Tokenizers for text data: bytes by default, any Hugging Face tokenizer as an option.

Both expose ``encode(text) -> list[int]``, ``decode(ids) -> str``, ``vocab_size`` and ``eos_id``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Tokenizer(Protocol):
    """What the datasets need from a tokenizer."""

    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, plus one end-of-document id 256 (``vocab_size = 257``)."""

    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """Wrap ``transformers.AutoTokenizer.from_pretrained(name)`` (a local path or a cached hub name)."""

    def __init__(self, name: str) -> None:
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(name)
        self.vocab_size = len(self._tok)
        eos = self._tok.eos_token_id
        self.eos_id = int(eos) if eos is not None else self.vocab_size - 1

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``[encode(t) for t in texts]`` in one call (a fast tokenizer spreads it over threads)."""
        return [list(ids) for ids in self._tok(list(texts), add_special_tokens=False)["input_ids"]]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids))


def get_tokenizer(name: Tokenizer | str | None = None) -> Tokenizer:
    """``None``/``"byte"`` -> :class:`ByteTokenizer`; another string -> :class:`HFTokenizer`; a tokenizer
    object is returned as is."""
    if name is None or name == "byte":
        return ByteTokenizer()
    if isinstance(name, str):
        return HFTokenizer(name)
    return name
