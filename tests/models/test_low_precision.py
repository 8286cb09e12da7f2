"""Every mixer generates in bf16 and fp16, with logits close to the float32 model's (issue 23.1)."""

from __future__ import annotations

import copy

import pytest
import torch
from mixer_configs import MIXERS, TINY

from mcrnn.models import MCConfig, MCForCausalLM

#: the 11 mixers of the shared table plus the two delta-rule memories (constant and log segments) and the
#: per-channel-decay memories gla and kda
LOW_PRECISION_MIXERS = {
    **MIXERS,
    "gated-deltanet": {"memory": "gated_deltanet", "segment_size": 4, "aggregation": "grm"},
    "deltanet-log": {"memory": "deltanet", "segmentation": "log", "aggregation": "grm"},
    "gla-log-independent": {"memory": "gla", "segmentation": "log", "init": "independent"},
    "kda": {"memory": "kda", "segment_size": 3, "aggregation": "ssc", "ssc_top_k": 1},
}
#: max |logits - float32 logits| allowed, as a multiple of eps(dtype) * max |float32 logits|: 4x the
#: largest measured over these 13 mixers (bf16: 11.7, gated-deltanet; fp16: 8.2, grm; eps = 2^-7, 2^-10)
BOUND_IN_EPS = 48
PROMPT, NEW = 6, 5  # tokens 6..10 cross the segment boundaries at 8 (C=4), 9 (C=3) and the log level 8


def _prefill_decode_logits(model: MCForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    """Logits of ``ids`` [B, T]: the first ``PROMPT`` tokens as one prefill, then one token per call."""
    with torch.no_grad():
        out = model(ids[:, :PROMPT], use_cache=True)
        logits, cache = [out.logits], out.cache
        for t in range(PROMPT, ids.shape[1]):
            out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
            logits.append(out.logits)
            cache = out.cache
    return torch.cat(logits, dim=1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", list(LOW_PRECISION_MIXERS))
def test_generate_in_low_precision_matches_float32(name: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    reference = MCForCausalLM(MCConfig(**TINY, **LOW_PRECISION_MIXERS[name])).eval()
    model = copy.deepcopy(reference).to(dtype)
    prompt = torch.randint(1, TINY["vocab_size"], (2, PROMPT))
    generated = model.generate(prompt, max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    assert generated.shape == (2, PROMPT + NEW) and torch.equal(generated[:, :PROMPT], prompt)
    logits = _prefill_decode_logits(model, generated)
    assert logits.dtype == dtype
    assert torch.equal(logits[:, PROMPT - 1 : -1].argmax(-1), generated[:, PROMPT:])  # greedy = its logits
    want = _prefill_decode_logits(reference, generated)
    bound = BOUND_IN_EPS * torch.finfo(dtype).eps * want.abs().max()
    assert (logits.float() - want).abs().max() <= bound
