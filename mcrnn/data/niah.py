"""RULER-style single needle-in-a-haystack tasks (Hsieh et al., 2024): S-NIAH-1, -2 and -3.

One needle sentence ``"One of the special magic {kind} for {key} is: {value}."`` is hidden at a random
depth of a haystack; the prompt ends with a question about ``key`` and the answer is `` {value}``.

- ``niah_1``: the haystack repeats the noise sentences of RULER; the value is a 7-digit number.
- ``niah_2``: an essay-like haystack (sentences drawn, seeded, from a built-in bank of essay prose, or
  from ``haystack_file``); the value is a 7-digit number.
- ``niah_3``: the essay-like haystack; the value is a UUID.

``context_length`` is the prompt length in tokens (haystack + needle + question, answer excluded); the
haystack is cut to fit exactly. Each example is a pure function of ``(task, context_length, seed, i)``.
Item ``i`` gives ``input_ids = (prompt + answer)[:-1]`` and ``labels`` equal to the answer tokens at the
positions that predict them and -100 elsewhere, so greedy decoding of the answer is correct exactly when
the argmax at every labelled position is.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mcrnn.data.mqar import IGNORE_INDEX
from mcrnn.data.text import read_documents
from mcrnn.data.tokenizer import Tokenizer, get_tokenizer

TASKS = ("niah_1", "niah_2", "niah_3")

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "

ESSAY = (
    "The best way to get new ideas is to notice what seems missing. "
    "Most startups fail because they make something nobody wants. "
    "It is hard to tell at first which problems are worth solving. "
    "Good writing is mostly rewriting, and the first draft is only a map. "
    "People who work on hard problems tend to underestimate how long they take. "
    "A small group of users who love a product is worth more than a crowd who merely like it. "
    "Taste can be learned, but only by making many things and judging them honestly. "
    "The cities people live in send them messages about what matters. "
    "When you are young you tend to think that the work is the easy part. "
    "Schools teach students to game tests rather than to learn the subject. "
    "An essay should try to figure something out instead of announcing a conclusion. "
    "The most ambitious projects often begin as side projects that look like toys. "
    "It is easier to change your mind when nobody is watching. "
    "Programmers who write for themselves usually write the most interesting programs. "
    "Wealth is created by doing things that other people want. "
    "The surprising thing about the web was how quickly it turned into a medium for everyone. "
    "Curiosity is a better guide to important work than ambition. "
    "Most of the time the obstacle is not a lack of ability but a lack of nerve. "
    "Reading old books is a way to find out which ideas were fashions. "
    "A good question is worth more than a clever answer. "
)

KEY_WORDS = (
    "amber", "brisk", "cobalt", "dapper", "ember", "fable", "gentle", "harbor", "ivory", "jolly",
    "kindred", "lunar", "meadow", "nimble", "opal", "placid", "quiet", "rustic", "silver", "tidal",
    "umber", "velvet", "willow", "xenial", "yonder", "zephyr",
)


@dataclass(frozen=True)
class NIAHConfig:
    """One S-NIAH split: ``task`` in ``TASKS``, prompt length in tokens, examples, seed, depth range."""

    task: str = "niah_1"
    context_length: int = 1024
    num_examples: int = 100
    seed: int = 0
    min_depth: float = 0.0
    max_depth: float = 1.0
    haystack_file: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        for name in ("context_length", "num_examples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not 0.0 <= self.min_depth <= self.max_depth <= 1.0:
            raise ValueError(f"need 0 <= min_depth <= max_depth <= 1, got {self.min_depth}, {self.max_depth}")


def _sentences(text: str) -> list[str]:
    parts = [p.strip() for p in text.replace("\n", " ").split(". ")]
    return [p if p.endswith(".") else p + "." for p in parts if p]


def make_example(config: NIAHConfig, index: int, tokenizer: Tokenizer) -> tuple[list[int], list[int], str]:
    """``(prompt_ids, answer_ids, answer_text)`` of example ``index`` (``context_length`` prompt ids)."""
    rng = random.Random(f"{config.task}:{config.context_length}:{config.seed}:{index}")
    key = f"{rng.choice(KEY_WORDS)}-{rng.choice(KEY_WORDS)}"
    if config.task == "niah_3":
        kind, value = "uuids", str(uuid.UUID(int=rng.getrandbits(128), version=4))
    else:
        kind, value = "numbers", str(rng.randrange(1_000_000, 10_000_000))
    needle = tokenizer.encode(f" One of the special magic {kind} for {key} is: {value}. ")
    question = tokenizer.encode(
        f" What is the special magic {kind[:-1]} for {key} mentioned in the provided text?"
        f" The special magic {kind[:-1]} for {key} mentioned in the provided text is:"
    )
    answer = tokenizer.encode(f" {value}")
    room = config.context_length - len(needle) - len(question)
    if room < 0:
        raise ValueError(
            f"context_length={config.context_length} is too short for the needle and question "
            f"({len(needle) + len(question)} tokens)"
        )
    if config.task == "niah_1":
        bank = _sentences(NOISE)
    elif config.haystack_file is not None:
        bank = _sentences(" ".join(read_documents(Path(config.haystack_file))))
    else:
        bank = _sentences(ESSAY)
    haystack: list[int] = []
    boundaries = [0]
    position = 0 if config.task == "niah_1" else rng.randrange(len(bank))
    while len(haystack) < room:
        sentence = bank[position % len(bank)] if config.task == "niah_1" else rng.choice(bank)
        position += 1
        haystack.extend(tokenizer.encode(sentence + " "))
        boundaries.append(len(haystack))
    haystack = haystack[:room]
    depth = rng.uniform(config.min_depth, config.max_depth)
    target = int(depth * room)
    cut = min((b for b in boundaries if b <= room), key=lambda b: abs(b - target))
    prompt = haystack[:cut] + needle + haystack[cut:] + question
    return prompt, answer, value


class NIAHDataset(Dataset):
    """S-NIAH examples as ``{"input_ids", "labels"}`` of length ``context_length + len(answer) - 1``.

    Answer lengths are equal within a task for the byte tokenizer (7 digits or a 36-char UUID plus a
    space), so a split stacks into one tensor.
    """

    def __init__(self, config: NIAHConfig, tokenizer: Tokenizer | str | None = None) -> None:
        self.config = config
        self.tokenizer = get_tokenizer(tokenizer)
        self.answers: list[str] = []
        self.items: list[dict[str, torch.Tensor]] = []
        for index in range(config.num_examples):
            prompt, answer, value = make_example(config, index, self.tokenizer)
            sequence = torch.tensor(prompt + answer, dtype=torch.long)
            labels = torch.full_like(sequence, IGNORE_INDEX)
            labels[len(prompt) :] = sequence[len(prompt) :]
            self.items.append({"input_ids": sequence[:-1], "labels": labels[1:]})
            self.answers.append(value)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index]
