"""Tokenizers for text data: bytes by default, any Hugging Face tokenizer as an option.

Both expose ``encode(text) -> list[int]``, ``decode(ids) -> str``, ``vocab_size`` and ``eos_id``, and
``to_hf()``: the same tokenizer as a ``transformers`` tokenizer, which ``save_pretrained`` writes into a
model folder so that ``AutoTokenizer.from_pretrained(folder)`` loads it without mcrnn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

#: the text of the byte tokenizer's end-of-document token (id 256) in its Hugging Face form
BYTE_EOS_TOKEN = "<|endoftext|>"


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

    def to_hf(self) -> PreTrainedTokenizerFast:
        """This tokenizer as a ``PreTrainedTokenizerFast`` (built with the ``tokenizers`` library).

        Byte-level BPE without merges: byte ``b`` is the token ``byte_symbols()[b]`` of id ``b``, and
        ``BYTE_EOS_TOKEN`` is id 256, the eos and pad token. ``encode(text, add_special_tokens=False)``
        equals :meth:`encode` (a literal ``BYTE_EOS_TOKEN`` in the text is encoded as its bytes too),
        ``decode(ids, skip_special_tokens=True)`` equals :meth:`decode`; no bos token is added.
        """
        from tokenizers import Tokenizer as BackendTokenizer
        from tokenizers import decoders, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        vocab = {symbol: byte for byte, symbol in enumerate(byte_symbols())}
        backend = BackendTokenizer(models.BPE(vocab=vocab, merges=[]))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        backend.decoder = decoders.ByteLevel()
        return PreTrainedTokenizerFast(
            tokenizer_object=backend,
            eos_token=BYTE_EOS_TOKEN,  # added after the 256 bytes: id 256 = eos_id
            pad_token=BYTE_EOS_TOKEN,
            split_special_tokens=True,
            clean_up_tokenization_spaces=False,
        )


def byte_symbols() -> list[str]:
    """The printable character standing for each byte in byte-level BPE vocabularies (GPT-2's table,
    which ``tokenizers``' ``ByteLevel`` pre-tokenizer and decoder use): a byte that is a printable
    Latin-1 character other than space and soft hyphen stands for itself; the other bytes, in
    increasing order, stand for ``chr(256)``, ``chr(257)``, ... Returns the 256 characters by byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    kept = set(printable)
    others = iter(range(256, 512))
    return [chr(byte) if byte in kept else chr(next(others)) for byte in range(256)]


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

    def to_hf(self) -> PreTrainedTokenizerBase:
        """The wrapped ``transformers`` tokenizer."""
        return self._tok


def get_tokenizer(name: Tokenizer | str | None = None) -> Tokenizer:
    """``None``/``"byte"`` -> :class:`ByteTokenizer`; another string -> :class:`HFTokenizer`; a tokenizer
    object is returned as is."""
    if name is None or name == "byte":
        return ByteTokenizer()
    if isinstance(name, str):
        return HFTokenizer(name)
    return name
