"""A prefill that ends exactly on an explicit segment boundary (``segment_lengths``), then token-by-token
decoding, equals the full forward (issue 23.9): through the public op and through the model."""

import pytest
import torch
from op_inputs import mc_flat

from mcrnn.models import MCConfig, MCForCausalLM

LENGTHS = [4, 8, 4]  # boundaries after 4, 12 and 16 tokens; tokens past 16 continue the last segment
T = 20
OPTIONS = {
    "grm-checkpoint": {"aggregation": "grm", "init": "checkpoint"},
    "ssc-independent": {"aggregation": "ssc", "init": "independent"},
    "residual-checkpoint": {"aggregation": "residual", "init": "checkpoint"},
}


def _decode(step, prefill: int) -> torch.Tensor:
    """Outputs of ``step(start, stop, cache)`` over ``[0, prefill)`` then one token at a time to ``T``."""
    out, cache = step(0, prefill, None)
    outputs = [out]
    for t in range(prefill, T):
        out, cache = step(t, t + 1, cache)
        outputs.append(out)
    return torch.cat(outputs, dim=1)


@pytest.mark.parametrize("memory", ["linear", "gated_deltanet"])
@pytest.mark.parametrize("options", list(OPTIONS.values()), ids=list(OPTIONS))
@pytest.mark.parametrize("prefill", [4, 12, 16])
def test_op_prefill_on_a_boundary_then_decode(memory, options, prefill):
    gen = torch.Generator().manual_seed(0)
    q, k, v, u = (torch.randn(2, T, 2, 4, generator=gen, dtype=torch.float64) for _ in range(4))
    k = torch.nn.functional.normalize(k, dim=-1)
    gates = {"log_decay": -torch.rand(2, T, 2, generator=gen, dtype=torch.float64)}
    if memory == "gated_deltanet":
        gates["beta"] = torch.rand(2, T, 2, generator=gen, dtype=torch.float64)
    spec = {
        "segment_lengths": LENGTHS,
        "memory": memory,
        **options,
        "top_k": 1 if "ssc" in str(options) else None,
    }
    full = mc_flat(q, k, v, u, **spec, **gates)

    def step(start, stop, cache):
        part = {name: x[:, start:stop] for name, x in {"q": q, "k": k, "v": v, "u": u, **gates}.items()}
        if cache is None:
            return mc_flat(**part, **spec, output_cache=True)
        return mc_flat(**part, memory=memory, cache=cache, output_cache=True)

    torch.testing.assert_close(_decode(step, prefill), full, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("memory", ["linear", "swla", "deltanet", "gated_deltanet", "dla", "titans"])
@pytest.mark.parametrize("options", list(OPTIONS.values()), ids=list(OPTIONS))
def test_model_prefill_on_a_boundary_then_decode(memory, options):
    torch.manual_seed(0)
    extra = {"ssc_top_k": 1} if options["aggregation"] == "ssc" else {}
    if memory in ("dla", "titans"):
        extra |= {"chunk_size": 4, "memory_expansion": 2}
    config = MCConfig(
        vocab_size=37,
        hidden_size=16,
        num_hidden_layers=2,
        num_heads=2,
        memory=memory,
        segment_lengths=LENGTHS,
        **options,
        **extra,
    )
    model = MCForCausalLM(config).double().eval()
    ids = torch.randint(0, 37, (2, T), generator=torch.Generator().manual_seed(1))

    def step(start, stop, cache):
        out = model(ids[:, start:stop], cache=cache, use_cache=True)
        return out.logits, out.cache

    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        for prefill in (4, 12, 16):
            torch.testing.assert_close(_decode(step, prefill), full, atol=1e-10, rtol=1e-10)
