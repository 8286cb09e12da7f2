"""Datasets: synthetic recall (MQAR, S-NIAH, passkey) and language modelling from local text files.

Every dataset is map-style and yields ``{"input_ids": LongTensor[T], "labels": LongTensor[T]}`` with
``labels = -100`` where no loss is taken.
"""

from mcrnn.data.mqar import IGNORE_INDEX, MQARConfig, MQARDataset, make_mqar
from mcrnn.data.niah import TASKS as NIAH_TASKS
from mcrnn.data.niah import NIAHConfig, NIAHDataset
from mcrnn.data.passkey import PasskeyConfig, PasskeyDataset, make_passkey
from mcrnn.data.text import TextDataset, read_documents, tokenize_files
from mcrnn.data.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer, get_tokenizer

__all__ = [
    "IGNORE_INDEX",
    "NIAH_TASKS",
    "ByteTokenizer",
    "HFTokenizer",
    "MQARConfig",
    "MQARDataset",
    "NIAHConfig",
    "NIAHDataset",
    "PasskeyConfig",
    "PasskeyDataset",
    "TextDataset",
    "Tokenizer",
    "get_tokenizer",
    "make_mqar",
    "make_passkey",
    "read_documents",
    "tokenize_files",
]
