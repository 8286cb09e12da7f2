"""Tokenize local text once into memory-mapped token shards for training (``data: {type: shards}``).

Inputs are files or folders (searched recursively) of ``.txt`` (one document per file), ``.jsonl``
(one document per line, in ``--field``) and ``.parquet`` (the ``--field`` column; needs pyarrow):
FineWeb-style corpora as downloaded. Every document is followed by the tokenizer's end-of-document id.
The output folder gets ``shard_NNNNN.bin`` (uint16 ids for vocabularies up to 65,536, else uint32)
and ``index.json``, written last, so a folder with an index is complete.
"""

from __future__ import annotations

import argparse
import time

from mcrnn.utils.arguments import positive_int

EXAMPLES = """
  mcrnn prepare-data data/tinyshakespeare.txt --out data/shakespeare-bytes
  mcrnn prepare-data fineweb-edu/sample/10BT --out data/fineweb-edu-32k \\
      --tokenizer hf-internal-testing/llama-tokenizer
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help=".txt/.jsonl/.parquet files, or folders holding them")
    parser.add_argument("--out", required=True, help="folder for the shards and index.json")
    parser.add_argument(
        "--tokenizer", default="byte", help="'byte' or a Hugging Face tokenizer name or local path"
    )
    parser.add_argument("--field", default="text", help="the text field of .jsonl records / .parquet rows")
    parser.add_argument(
        "--shard-tokens",
        type=positive_int,
        default=2**27,
        help="tokens per shard (a shard ends after a document)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the shards already in --out")


def run(args: argparse.Namespace) -> int:
    from mcrnn.train.data_shards import prepare_shards

    started = time.perf_counter()
    index = prepare_shards(
        args.inputs,
        args.out,
        tokenizer=args.tokenizer,
        field=args.field,
        shard_tokens=args.shard_tokens,
        overwrite=args.overwrite,
    )
    seconds = time.perf_counter() - started
    speed = index["tokens"] / max(seconds, 1e-9)
    print(
        f"{index['tokens']:,} tokens ({index['dtype']}) of {index['documents']:,} documents in "
        f"{len(index['shards'])} shard(s) -> {args.out} ({seconds:.1f} s, {speed:,.0f} tok/s)"
    )
    return 0
