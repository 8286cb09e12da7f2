"""Load a saved model folder in a fresh Python process that never imports mcrnn, as a tool would."""

import os
import subprocess
import sys
from pathlib import Path

import torch

#: run in the child: no mcrnn module may be loaded before, and the model class must come from the
#: folder's copied code (``transformers_modules``), not from a registration
_CHILD = """
import sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

folder, text, ids, out = sys.argv[1], sys.argv[2], torch.load(sys.argv[3]), sys.argv[4]
assert not [m for m in sys.modules if m.split(".")[0] == "mcrnn"], "mcrnn imported before loading"
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
tokenizer = AutoTokenizer.from_pretrained(folder)
with torch.no_grad():
    logits = model(ids).logits
torch.save({"logits": logits, "ids": tokenizer(text, add_special_tokens=False).input_ids,
            "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}, out)
"""


def load_in_fresh_process(folder: Path, text: str, ids: torch.Tensor, work: Path) -> dict:
    """In a new process: ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` and
    ``AutoTokenizer.from_pretrained(folder)``; returns the logits of ``ids`` [B, T] (``logits``
    [B, T, V]), the token ids of ``text`` (``ids``) and the tokenizer's ``eos`` / ``pad`` ids. Offline,
    with the dynamic-module cache inside ``work``. (One folder a process: once the folder's code has
    imported mcrnn, ``transformers`` prefers the registered classes to a folder's code.)"""
    torch.save(ids, work / "ids.pt")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_MODULES_CACHE": str(work / "hf_modules"),
    }
    args = [str(folder), text, str(work / "ids.pt"), str(work / "result.pt")]
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(work / "result.pt")
