"""``mcrnn estimate``: the cost model of DESIGN.md §8 (states read per token, flops), the memory model's
terms, and the memory model against a step measured on the CPU."""

from pathlib import Path

import pytest

from mcrnn.cli import main
from mcrnn.models import MCConfig, MCForCausalLM
from mcrnn.train.estimate import (
    GPUS,
    BlockActivations,
    estimate,
    measure_block_activations,
    measure_cpu_step,
    parameter_counts,
    states_read_per_token,
    training_flops_per_token,
)

ROOT = Path(__file__).parents[2]
SMALL = {"vocab_size": 257, "hidden_size": 32, "num_hidden_layers": 2, "num_heads": 2}


def test_states_read_per_token_follow_the_segmentation():
    grm = MCConfig(**SMALL, aggregation="grm", segment_size=256)
    assert states_read_per_token(grm, 1024) == pytest.approx((0 + 1 + 2 + 3) / 4)  # earlier segments
    ssc = MCConfig(**SMALL, aggregation="ssc", segment_size=256, ssc_top_k=2)
    assert states_read_per_token(ssc, 1024) == pytest.approx((0 + 1 + 2 + 2) / 4)  # at most top_k
    log = MCConfig(**SMALL, segmentation="log")
    # prefixes of 1..8 tokens split into popcount(length) buckets, one of them the online one
    assert states_read_per_token(log, 8) == pytest.approx(sum(bin(n).count("1") - 1 for n in range(1, 9)) / 8)
    assert states_read_per_token(MCConfig(**SMALL), 1024) == 0.0  # the base RNN
    assert states_read_per_token(MCConfig(**SMALL, mixer="attention"), 1024) == 0.0


def test_training_flops_of_attention_and_matrix_memory():
    seq = 1024
    attention = MCConfig(**SMALL, mixer="attention")
    total, embedding = parameter_counts(attention)
    matmul = total - embedding + embedding  # tied: the LM head multiplies by the embedding
    assert training_flops_per_token(attention, seq) == pytest.approx(3 * (2 * matmul + 2 * 2 * seq * 16 * 2))
    grm = MCConfig(**SMALL, segment_size=256, tie_word_embeddings=False)
    total, embedding = parameter_counts(grm)
    per_head = 4 * 64 * 16 + 4 * 16 * 16 + 1.5 * 2 * 16 * 16  # chunk 64, D = 16, 1.5 states read
    assert training_flops_per_token(grm, seq) == pytest.approx(
        3 * (2 * (total - embedding) + 2 * 2 * per_head)
    )


def test_memory_terms_shard_with_fsdp():
    config = MCConfig(**SMALL, segment_size=64)
    kwargs = {"seq_len": 128, "micro_batch_size": 2, "gpu": GPUS["h100"], "mfu": 0.4, "tokens": 1e9}
    one = estimate(config, gpus=1, **kwargs)
    eight = estimate(config, gpus=8, **kwargs)
    assert one.weights == 4 * one.parameters and one.optimizer == 8 * one.parameters and one.gathered == 0
    assert eight.weights == one.weights / 8 and eight.gradients == one.gradients / 8 and eight.gathered > 0
    assert eight.activations == one.activations == pytest.approx(2 * one.backward_working)  # 2 blocks
    assert one.backward_working == pytest.approx(2 * 128 * one.block_bytes_per_token, rel=0.05)
    assert eight.activations_checkpointed < eight.activations
    assert one.gpu_hours == pytest.approx(1e9 / one.tokens_per_second_per_gpu / 3600)
    with pytest.raises(ValueError, match="mfu must be in"):
        estimate(config, gpus=1, **{**kwargs, "mfu": 0.0})


@pytest.mark.parametrize(
    "mixer", [{"mixer": "attention"}, {"segment_size": 128}, {"memory": "titans", "segment_size": 128}]
)
def test_activation_model_against_a_step_measured_on_the_cpu(mixer):
    """The activations the model predicts (``L`` blocks x a per-token slope measured on one block at two
    lengths, plus the head) against the bytes autograd saves over a whole model's step at another batch,
    length and depth: within 15% (measured: docs/scaling.md)."""
    config = MCConfig(**{**SMALL, "num_hidden_layers": 3, **mixer})
    found = estimate(
        config,
        seq_len=512,
        micro_batch_size=3,
        gpus=1,
        gpu=GPUS["h100"],
        mfu=0.4,
        tokens=1e9,
        precision="fp32",
        checkpointing=False,
    )
    measured = measure_cpu_step(config, seq_len=512, micro_batch_size=3, precision="fp32")
    modelled = found.activations + found.head_saved
    assert modelled == pytest.approx(measured["saved_bytes"], rel=0.15)


def test_cli_prints_the_estimate_of_a_paper_config(capsys):
    config = ROOT / "configs" / "paper" / "760m" / "transformer.yaml"
    assert main(["estimate", "--config", str(config), "--gpu", "h100", "--gpus", "32"]) == 0
    out = capsys.readouterr().out
    shape = {"vocab_size": 32000, "hidden_size": 1536, "num_hidden_layers": 24, "num_heads": 16}
    total, _ = parameter_counts(MCConfig(**shape, mixer="attention", tie_word_embeddings=False))
    assert f"parameters: {total:,}" in out
    assert "total with checkpointing" in out and "GPU-hours" in out and "30B tokens" in out


def test_measuring_a_block_too_large_for_the_machine_is_refused():
    config = MCConfig(**SMALL, segment_size=64)
    with pytest.raises(
        ValueError, match=r"would take over 0 GiB: it keeps \d+ x d bytes per token at 128 tokens"
    ):
        measure_block_activations(config, "fp32", max_bytes=1000)


def test_fsdp_gathered_bytes_and_checkpointing_speed_are_exact():
    """By hand from the docstring: FSDP2 holds the root's own parameters and two blocks (the running one
    and the prefetched one) unsharded in fp32, ``4 (root + 2 block)`` bytes; checkpointing keeps a
    block's input (``4 d`` per token) per block plus one block's activations, and one more forward makes
    the tokens/s ``3/4`` of ``MFU x peak / flops``. The block's fit is given, so nothing is measured."""
    config = MCConfig(**SMALL, segment_size=64, tie_word_embeddings=False)
    params = dict(MCForCausalLM(config).named_parameters())
    block = sum(p.numel() for name, p in params.items() if name.startswith("model.layers.0."))
    root = sum(p.numel() for name, p in params.items() if not name.startswith("model.layers."))
    assert sum(p.numel() for p in params.values()) == root + 2 * block  # two equal blocks
    kwargs = {"seq_len": 128, "micro_batch_size": 2, "gpu": GPUS["h100"], "mfu": 0.4, "tokens": 1e9}
    kwargs["activations"] = BlockActivations(fixed=1000.0, per_token=10.0, per_state_read=2.0)
    on = estimate(config, gpus=8, checkpointing=True, **kwargs)
    off = estimate(config, gpus=8, checkpointing=False, **kwargs)
    assert on.gathered == off.gathered == 4 * (root + 2 * block)
    assert estimate(config, gpus=1, **kwargs).gathered == 0  # one GPU: nothing sharded
    assert estimate(config, gpus=8, parallel="ddp", **kwargs).gathered == 0  # DDP: replicated
    flops = training_flops_per_token(config, 128)
    assert off.tokens_per_second_per_gpu == pytest.approx(0.4 * 989e12 / flops, rel=1e-12)
    assert on.tokens_per_second_per_gpu == pytest.approx(0.75 * 0.4 * 989e12 / flops, rel=1e-12)
    one_block = 1000.0 + 2 * 128 * (10.0 + 2.0 * 0.5)  # half the tokens read one cached state
    assert on.backward_working == one_block and on.activations == 2 * one_block
    assert on.activations_checkpointed == 2 * (2 * 128) * 4 * 32 + one_block
