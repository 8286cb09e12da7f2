"""The retrofit changes only the read: one segment is the host model; each family's MC read is mcrnn's
op (the naive token-loop definition, float64) on the q, k, v and gates the host layer computed."""

import pytest
import torch
from op_inputs import mc_flat
from tiny import CONFIGS, DELTA_FAMILIES, KDA_FAMILIES, logits, tiny_model

import mcrnn.retrofit.families as families
from mcrnn.retrofit import add_memory_caching, remove_memory_caching, supported_layers

IDS = torch.randint(2, 64, (2, 37), generator=torch.Generator().manual_seed(0))
SPECS = [
    {"segment_size": 8, "aggregation": "average"},
    {"segment_size": 8, "aggregation": "grm", "init": "independent"},
    {"segment_size": 5, "aggregation": "grm"},
    {"segment_size": 4, "aggregation": "ssc", "top_k": 2},
    {"segment_size": 4, "aggregation": "ssc", "top_k": 1, "init": "independent"},
    {"segmentation": "log", "aggregation": "grm"},
    {"segmentation": "log", "aggregation": "average"},
]


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("aggregation", ["grm", "average"])
def test_one_segment_is_the_host_model(name, aggregation):
    """float32, 1e-5 (the hosts run their cores in float32 even in a float64 model, so float64 adds
    nothing here; the float64 check is the read below). Also after remove: the original."""
    model = tiny_model(name)
    reference = logits(model, IDS)
    add_memory_caching(model, aggregation=aggregation)
    assert len(supported_layers(model)) >= 1
    torch.testing.assert_close(logits(model, IDS), reference, atol=1e-5, rtol=0)
    remove_memory_caching(model)
    assert torch.equal(logits(model, IDS), reference)
    add_memory_caching(model, segment_size=4, aggregation="grm")  # the read matters to these logits
    assert (logits(model, IDS) - reference).abs().max() > 1e-3


def _capture(monkeypatch, family, layer):
    """Record every (q, k, v, u, gates) the family's read is called with, and what the replaced core
    function returns to the host layer's forward."""
    seen = {"inputs": [], "outputs": []}
    read = families.READS[family]

    def spy(q, k, v, u, gates, spec, cache, output_cache):
        seen["inputs"].append((q, k, v, u, gates, spec))
        return read(q, k, v, u, gates, spec, cache, output_cache)

    monkeypatch.setitem(families.READS, family, spy)
    patched = layer._mcrnn_retrofit.forward_globals
    for name in layer._mcrnn_retrofit.family.cores:
        core = patched[name]

        def returned(*args, core=core, **kwargs):
            out = core(*args, **kwargs)
            seen["outputs"].append(out[0] if isinstance(out, tuple) else out)
            return out

        patched[name] = returned
    return seen


@pytest.mark.parametrize("name", ["qwen3_5_text", "olmo_hybrid", "mamba2", "bamba", "kimi_linear"])
@pytest.mark.parametrize("options", SPECS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("router", ["query", "learned"])
def test_read_is_the_op_on_the_layers_inputs(monkeypatch, name, options, router):
    if router == "learned" and options["aggregation"] == "average":
        pytest.skip("average has no router")
    if options.get("segmentation") == "log" and options.get("init") == "independent":
        pytest.skip("the delta rule takes log with checkpoint only")
    model = tiny_model(name, torch.float64)
    add_memory_caching(model, router=router, **options)
    for module in model.modules():  # a learned router away from its zero init, the gate fully open
        if hasattr(module, "mc_router"):
            torch.nn.init.normal_(module.mc_router.proj.weight, std=0.5)
            torch.nn.init.ones_(module.mc_router.gate)
    family = "gated_deltanet" if name in DELTA_FAMILIES else "kda" if name in KDA_FAMILIES else "mamba2"
    layer = supported_layers(model)[0][0]
    seen = _capture(monkeypatch, family, layer)
    logits(model, IDS)
    (q, k, v, u, gates, spec), core_out = seen["inputs"][0], seen["outputs"][0]
    assert q.dtype == torch.float64 and spec.to_dict()["aggregation"] == options["aggregation"]
    if router == "query":
        assert u is q  # u_t = q_t as the host reads with it
    memory = {"gated_deltanet": "gated_deltanet", "kda": "kda", "mamba2": "linear"}[family]
    # check_inputs=False: OLMo-hybrid (allow_neg_eigval) writes with beta in [0, 2], where the op asks [0, 1]
    options = {"spec": spec, "memory": memory, "backend": "naive", "check_inputs": False}
    expected = mc_flat(q, k, v, u, **options, **gates)
    if family == "mamba2":
        expected = expected + layer.D[:, None] * v
    torch.testing.assert_close(core_out.reshape(expected.shape), expected, atol=1e-10, rtol=1e-10)
    assert q.shape[2] == v.shape[2]  # GVA: key heads expanded to the value heads


def test_gva_heads_follow_the_host():
    """Qwen3.5 with 2 key heads and 4 value heads: the MC read runs on 4 heads, key head j serving
    value heads 2j and 2j+1 (repeat_interleave, as the host)."""
    model = tiny_model("qwen3_5_text")
    layer = supported_layers(model)[0][0]
    assert layer.num_v_heads == 2 * layer.num_k_heads
    query = torch.randn(1, 3, 2, 8)
    value, g, beta = torch.randn(1, 3, 4, 8), -torch.rand(1, 3, 4), torch.rand(1, 3, 4)
    q, k, _, _ = families.delta_inputs(query, query, value, g, beta, l2norm=True)
    assert q.shape == k.shape == (1, 3, 4, 8)
    torch.testing.assert_close(q[:, :, 0], q[:, :, 1])
    unit = torch.nn.functional.normalize(query[:, :, 1], dim=-1)
    torch.testing.assert_close(q[:, :, 2] * 8**0.5, unit, atol=1e-6, rtol=0)
