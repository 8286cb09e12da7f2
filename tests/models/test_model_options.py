"""Every layer option reachable from MCConfig, and the Hugging Face conventions of the models."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import mcrnn  # noqa: F401  (registers the Auto classes)
from mcrnn.layers import MemoryCachingAttention
from mcrnn.models import MCConfig, MCForCausalLM

VOCAB = 37
TINY = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_heads": 2}


def _train_steps(model: MCForCausalLM, steps: int = 3) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        ids = torch.randint(0, VOCAB, (2, 24), generator=gen)
        loss = model(ids, labels=ids).loss
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"segmentation": "log", "aggregation": "grm"}, id="log-linear++"),
        pytest.param(
            {
                "memory": "titans",
                "memory_depth": 3,
                "memory_expansion": 2,
                "segment_size": 8,
                "chunk_size": 4,
            },
            id="titans-depth-3",
        ),
    ],
)
def test_paper_rows_build_train_save_reload_generate(options: dict, tmp_path) -> None:
    """Log-Linear++ and a depth-3 Titans model come from MCConfig alone and survive a round trip."""
    torch.manual_seed(0)
    model = MCForCausalLM(MCConfig(**TINY, **options))
    mixer = model.model.layers[0].mixer
    assert isinstance(mixer, MemoryCachingAttention)
    if "memory_depth" in options:
        assert len(mixer.deep.weights) == 3
    else:
        assert mixer.spec.kind == "log"
    before = [p.detach().clone() for p in model.parameters()]
    _train_steps(model)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    prompt = torch.randint(1, VOCAB, (2, 5))
    generated = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    drop = ("_name_or_path", "transformers_version")
    assert {k: v for k, v in loaded.config.to_dict().items() if k not in drop} == {
        k: v for k, v in model.config.to_dict().items() if k not in drop
    }
    assert torch.equal(loaded.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0), generated)


def test_small_segments_work_with_default_chunking() -> None:
    """The inner chunk is the library's business: segment_size=8 needs no chunk_size."""
    config = MCConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_heads=4, segment_size=8)
    ids = torch.randint(0, 97, (1, 20))
    assert MCForCausalLM(config)(ids).logits.shape == (1, 20, 97)


def test_every_layer_option_reaches_the_layer_and_round_trips(tmp_path) -> None:
    options = {"head_dim": 12, "separate_router": False, "conv_size": 2, "use_decay": False,
               "segment_lengths": [4, 8], "pooling": "sum", "init": "independent", "aggregation": "ssc",
               "ssc_top_k": 1}
    config = MCConfig(**TINY, **options)
    config.save_pretrained(tmp_path)
    loaded = MCConfig.from_pretrained(tmp_path)
    assert {name: getattr(loaded, name) for name in options} == options
    mixer = MemoryCachingAttention.from_config(loaded, layer_idx=0)
    assert mixer.head_dim == 12 and mixer.q_proj.out_features == 24
    assert mixer.u_proj is None and mixer.decay_proj is None
    assert mixer.convs["q"].kernel_size == 2
    assert mixer.spec == loaded.mc_spec and mixer.spec.segment_lengths == (4, 8)


def test_mc_layers_keep_their_own_init() -> None:
    """_init_weights gives HF's normal(0, 0.02) to embeddings and the MLP, and the MC layer its own init
    (PyTorch defaults for projections, the deep memory's retention bias at 2)."""
    torch.manual_seed(0)
    model = MCForCausalLM(MCConfig(**TINY, memory="dla", segment_size=8, memory_expansion=2))
    mixer = model.model.layers[0].mixer
    bound = 1 / TINY["hidden_size"] ** 0.5  # nn.Linear's default: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert 0.8 * bound < mixer.q_proj.weight.abs().max() <= bound
    heads = TINY["num_heads"]
    assert torch.equal(mixer.deep.rate_proj.bias[heads : 2 * heads], torch.full((heads,), 2.0))
    assert abs(model.model.embed_tokens.weight.std().item() - 0.02) < 0.003
    assert model.model.layers[0].mlp.up_proj.weight.abs().max() < 0.15


def test_gradient_checkpointing_recomputes_and_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    model = MCForCausalLM(MCConfig(**TINY, segment_size=4, aggregation="grm")).train()
    ids = torch.randint(0, VOCAB, (2, 12))
    calls = []
    model.model.layers[0].mixer.register_forward_hook(lambda *_: calls.append(1))

    def grads() -> list[torch.Tensor]:
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    assert len(calls) == 1
    model.gradient_checkpointing_enable()
    assert all(block.gradient_checkpointing for block in model.model.layers)
    checkpointed = grads()
    assert len(calls) == 3  # forward, then the recomputation in the backward pass
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b)


def test_output_hidden_states() -> None:
    model = MCForCausalLM(MCConfig(**TINY, segment_size=4)).eval()
    ids = torch.randint(0, VOCAB, (1, 9))
    out = model(ids, output_hidden_states=True)
    assert len(out.hidden_states) == TINY["num_hidden_layers"] + 1
    assert torch.equal(out.hidden_states[0], model.model.embed_tokens(ids))
    torch.testing.assert_close(model.lm_head(out.hidden_states[-1]), out.logits)
    assert model(ids).hidden_states is None


def test_unknown_forward_keywords_are_rejected() -> None:
    model = MCForCausalLM(MCConfig(**TINY, segment_size=4)).eval()
    ids = torch.randint(0, VOCAB, (1, 5))
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['atention_mask'\]"):
        model(ids, atention_mask=torch.ones_like(ids))
    out = model(ids, output_attentions=True)  # no attention weights, as transformers' recurrent models
    assert out.attentions is None and out.logits.shape == (1, 5, VOCAB)
    model(ids, position_ids=torch.arange(5)[None], cache_position=torch.arange(5))  # what generate passes


MISSPELT = [
    ("segmnet_size", "segment_size"),
    ("aggregaton", "aggregation"),
    ("ssc_topk", "ssc_top_k"),
    ("attention_conv", "attention_conv_size"),
]


@pytest.mark.parametrize("typo,meant", MISSPELT)
def test_a_misspelt_option_is_an_error_not_another_model(typo, meant):
    """Without the check ``MCConfig(segmnet_size=8)`` silently built the base RNN (HF keeps extra keys)."""
    with pytest.raises(ValueError, match=f"unknown MCConfig option '{typo}'; did you mean '{meant}'"):
        MCConfig(vocab_size=11, hidden_size=16, num_heads=2, **{typo: 4})


def test_hugging_face_keys_and_unrelated_extras_still_load():
    config = MCConfig(vocab_size=11, hidden_size=16, num_heads=2, architectures=["MCForCausalLM"],
                      transformers_version="5.0", output_attentions=False, custom_note="kept")
    assert config.custom_note == "kept" and config.architectures == ["MCForCausalLM"]

