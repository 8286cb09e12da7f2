"""A folder in, a folder out: a retrofitted model saved (``save_retrofitted`` / ``mcrnn retrofit``)
loads with MC on through ``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)``, gives
the same logits and decodes; lm-evaluation-harness's ``hf`` model scores it offline."""

import json

import pytest
import torch
import transformers
from tiny import VOCAB, decode_logits, logits, tiny_model

from mcrnn.cli import main
from mcrnn.data import ByteTokenizer
from mcrnn.models import MCConfig, MCForCausalLM
from mcrnn.retrofit import CONFIG_KEY, add_memory_caching
from mcrnn.retrofit.hub import save_retrofitted

IDS = torch.randint(2, VOCAB, (2, 21), generator=torch.Generator().manual_seed(4))


def _mcrnn_model():
    torch.manual_seed(0)
    return MCForCausalLM(MCConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_heads=2)).eval()


FAMILIES = ["qwen3_5_text", "qwen3_next", "olmo_hybrid", "mamba2", "falcon_h1", "kimi_linear", "mcrnn"]


@pytest.mark.parametrize("name", FAMILIES)
def test_retrofit_save_reload_decode(tmp_path, name):
    model = _mcrnn_model() if name == "mcrnn" else tiny_model(name)
    router = "query" if name == "mcrnn" else "learned"
    add_memory_caching(model, segment_size=4, aggregation="grm", router=router)
    for module in model.modules():  # trained router weights must survive the round trip
        if hasattr(module, "mc_router"):
            torch.nn.init.normal_(module.mc_router.proj.weight, std=0.3)
            torch.nn.init.constant_(module.mc_router.gate, 0.5)
    expected = logits(model, IDS)
    save_retrofitted(model, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    auto = transformers.AutoModelForCausalLM
    loaded = auto.from_pretrained(tmp_path / "out", trust_remote_code=True).eval()
    if name == "mcrnn":  # a plain MC model: its MCConfig says it
        assert CONFIG_KEY not in config and config["segment_size"] == 4 and not config["separate_router"]
        assert type(loaded) is MCForCausalLM
    else:
        assert config[CONFIG_KEY]["router"] == router and config[CONFIG_KEY]["segment_size"] == 4
        assert config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_mcrnn_retrofit.")
        assert type(loaded).__name__.endswith("WithMemoryCaching")
    torch.testing.assert_close(logits(loaded, IDS), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(decode_logits(loaded, IDS, 9), expected, atol=1e-4, rtol=0)


def test_cli_writes_a_folder_lm_eval_scores(tmp_path, capsys):
    """``mcrnn retrofit SRC OUT ...`` on a saved Qwen3.5-style folder with a tokenizer; the harness's
    ``HFLM`` (``--model hf``, ``trust_remote_code=True``) loads OUT offline, and its loglikelihoods at
    batch size 2 equal the retrofitted model's own."""
    lm_eval = pytest.importorskip("lm_eval.models.huggingface", reason="lm-evaluation-harness (eval extra)")
    from lm_eval.api.instance import Instance

    byte_ids = {"vocab_size": 257, "pad_token_id": 256, "eos_token_id": 256, "bos_token_id": None}
    source = tiny_model("qwen3_5_text", **byte_ids)
    source.save_pretrained(tmp_path / "src")
    ByteTokenizer().to_hf().save_pretrained(tmp_path / "src")
    options = ["--segment-size", "4", "--aggregation", "ssc", "--top-k", "2", "--router", "query"]
    argv = ["retrofit", str(tmp_path / "src"), str(tmp_path / "out"), *options]
    assert main(argv) == 0
    assert "with a tokenizer" in capsys.readouterr().out
    model = add_memory_caching(source, segment_size=4, aggregation="ssc", top_k=2)
    out = str(tmp_path / "out")
    harness = lm_eval.HFLM(pretrained=out, trust_remote_code=True, batch_size=2, device="cpu")
    assert type(harness.model).__name__ == "Qwen3_5ForCausalLMWithMemoryCaching"
    pairs = [("The cat sat on the", " mat"), ("1 + 2 =", " 3"), ("Memory caching reads cached states", ".")]
    requests = [Instance("loglikelihood", {}, pair, index) for index, pair in enumerate(pairs)]
    scores = harness.loglikelihood(requests)
    tokenizer = ByteTokenizer()
    for (context, continuation), (score, _) in zip(pairs, scores, strict=True):
        ids = torch.tensor([tokenizer.encode(context + continuation)])
        n = len(tokenizer.encode(continuation))
        log_probs = torch.log_softmax(logits(model, ids)[0, -n - 1 : -1], dim=-1)
        own = log_probs.gather(1, ids[0, -n:, None]).sum()
        assert abs(score - float(own)) < 1e-4


def test_cli_errors_are_one_line(tmp_path, capsys):
    source = tiny_model("mamba2")
    source.save_pretrained(tmp_path / "src")
    capsys.readouterr()
    assert main(["retrofit", str(tmp_path / "src"), str(tmp_path / "out"), "--aggregation", "ssc"]) == 2
    assert capsys.readouterr().err.strip() == (  # checked before the model is loaded
        "mcrnn retrofit: error: aggregation='ssc' needs top_k (an int >= 1), got None"
    )
    assert not (tmp_path / "out").exists()
