"""Add Memory Caching to a saved model folder: ``mcrnn retrofit SRC OUT --segment-size 256 ...``.

SRC is a folder or hub name that ``AutoModelForCausalLM.from_pretrained`` loads (a transformers
Qwen3.5 / Qwen3-Next / OLMo-hybrid / Mamba2 / Bamba / Falcon-H1 / ... model, or an mcrnn model). OUT
gets the weights, the tokenizer and the MC settings (``config.json["mcrnn_memory_caching"]``); load it
with ``AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True)`` or evaluate it with
``lm_eval --model hf --model_args pretrained=OUT,trust_remote_code=True``. See docs/retrofit.md.
"""

from __future__ import annotations

import argparse

from mcrnn.utils.arguments import positive_int

EXAMPLES = """
  mcrnn retrofit Qwen/Qwen3.5-0.8B runs/qwen-mc --segment-size 256 --aggregation ssc --top-k 4
  mcrnn retrofit runs/x/checkpoints/step_00002000 runs/x-mc --segmentation log --aggregation grm
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="model folder (or hub name) to read")
    parser.add_argument("out", metavar="OUT", help="folder to write (replaced if it exists)")
    parser.add_argument("--segment-size", type=positive_int, default=None, help="tokens per segment")
    parser.add_argument("--segmentation", choices=("constant", "log"), default=None, help="log: Fenwick")
    parser.add_argument("--aggregation", default="average", help="average | grm | ssc | soup | residual")
    parser.add_argument("--init", default="checkpoint", help="checkpoint | independent")
    parser.add_argument("--top-k", type=positive_int, default=None, help="cached segments read by ssc")
    parser.add_argument("--router", default="query", help="query | learned (zero-initialised, exact at init)")


def run(args: argparse.Namespace) -> int:
    import transformers

    import mcrnn  # noqa: F401  (registers mcrnn's model classes, for mcrnn folders)
    from mcrnn.retrofit import add_memory_caching
    from mcrnn.retrofit.api import check_settings
    from mcrnn.retrofit.hub import save_retrofitted

    names = ("segment_size", "segmentation", "aggregation", "init", "top_k", "router")
    settings = {name: getattr(args, name) for name in names}
    check_settings(settings)  # before the (possibly long) load
    model = transformers.AutoModelForCausalLM.from_pretrained(args.src)
    add_memory_caching(model, **settings)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(args.src)
    except (OSError, ValueError, KeyError):  # a folder without a tokenizer (e.g. MQAR checkpoints)
        tokenizer = None
    out = save_retrofitted(model, args.out, tokenizer)
    print(f"wrote {out} ({'with' if tokenizer is not None else 'without'} a tokenizer)")
    return 0
