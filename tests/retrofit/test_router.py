"""The learned router: the wrapped model's logits equal the original's at init (float32, 1e-5) for any
segmentation; only the router's parameters train (freeze_backbone), and they receive gradients."""

import pytest
import torch
from tiny import VOCAB, logits, tiny_model

from mcrnn.retrofit import add_memory_caching, freeze_backbone, router_parameters

IDS = torch.randint(2, VOCAB, (2, 29), generator=torch.Generator().manual_seed(2))
SEGMENTS = [{"segment_size": 1}, {"segment_size": 3}, {"segment_size": 8}, {"segmentation": "log"}, {}]


@pytest.mark.parametrize("name", ["qwen3_5_text", "qwen3_next", "mamba2", "falcon_h1", "kimi_linear"])
@pytest.mark.parametrize("segments", SEGMENTS, ids=str)
@pytest.mark.parametrize("aggregation", ["grm", "ssc"])
def test_learned_router_is_the_identity_at_init(name, segments, aggregation):
    model = tiny_model(name)
    reference = logits(model, IDS)
    top_k = 2 if aggregation == "ssc" else None
    add_memory_caching(model, aggregation=aggregation, top_k=top_k, router="learned", **segments)
    torch.testing.assert_close(logits(model, IDS), reference, atol=1e-5, rtol=0)


def test_only_the_router_trains_and_it_gets_gradients():
    model = tiny_model("qwen3_5_text")
    add_memory_caching(model, segment_size=4, aggregation="grm", router="learned")
    routers = freeze_backbone(model)
    assert routers == router_parameters(model) and len(routers) == 2  # W_u and gamma of the one layer
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    prefix = "model.layers.0.linear_attn.mc_router"
    assert trainable == [f"{prefix}.gate", f"{prefix}.proj.weight"]
    model.train()
    loss = model(IDS, labels=IDS).loss
    loss.backward()
    gate, proj = routers  # gamma [H], W_u [H*Dk, hidden]
    assert gate.shape == (4,) and proj.shape == (4 * 8, 32)
    assert gate.grad is not None and gate.grad.abs().max() > 0  # dy/dgamma = y_mc - y_host != 0
    assert proj.grad is not None  # zero while gamma == 0; nonzero once the gate opens
    with torch.no_grad():
        gate.fill_(0.5)
    model.zero_grad()
    model(IDS, labels=IDS).loss.backward()
    assert proj.grad.abs().max() > 0
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_freeze_backbone_without_a_learned_router_is_an_error():
    model = tiny_model("mamba2")
    add_memory_caching(model, segment_size=4, aggregation="grm")
    with pytest.raises(ValueError, match="no learned router"):
        freeze_backbone(model)
