"""The Hugging Face form of the byte tokenizer (``ByteTokenizer.to_hf``) encodes and decodes as
``ByteTokenizer`` does, and loads with ``AutoTokenizer`` from a folder in a process without mcrnn."""

import json
import os
import random
import subprocess
import sys

from mcrnn.data import ByteTokenizer
from mcrnn.data.tokenizer import BYTE_EOS_TOKEN

#: ASCII controls, Latin-1, 2-, 3- and 4-byte UTF-8, combining marks, and the eos token's text
TEXTS = [
    "".join(map(chr, range(128))),
    "Grüße, 世界! naïve café — ½ ∑ 😀👍🏽 e\u0301",
    f"two documents{BYTE_EOS_TOKEN}in one string",
    "",
]


def test_encode_and_decode_equal_the_byte_tokenizer():
    byte, hf = ByteTokenizer(), ByteTokenizer().to_hf()
    for text in TEXTS:
        ids = byte.encode(text)
        assert hf(text, add_special_tokens=False).input_ids == ids
        assert hf.decode(ids + [byte.eos_id], skip_special_tokens=True) == text == byte.decode(ids)
    # every id, including byte runs that are not UTF-8 and the eos id, decodes the same
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.randrange(byte.vocab_size) for _ in range(rng.randrange(1, 12))]
        assert hf.decode(ids, skip_special_tokens=True) == byte.decode(ids)
    assert (hf.eos_token_id, hf.pad_token_id, hf.bos_token_id, len(hf)) == (256, 256, None, 257)
    assert hf.convert_ids_to_tokens(byte.eos_id) == BYTE_EOS_TOKEN


def test_saved_folder_loads_with_auto_tokenizer_without_mcrnn(tmp_path):
    ByteTokenizer().to_hf().save_pretrained(tmp_path)
    child = (
        "import json, sys; from transformers import AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'mcrnn']\n"
        "print(json.dumps([tok(sys.argv[2], add_special_tokens=False).input_ids, tok.eos_token_id]))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", child, str(tmp_path), TEXTS[1]], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == [ByteTokenizer().encode(TEXTS[1]), 256]
