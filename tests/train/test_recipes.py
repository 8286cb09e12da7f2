"""The paper recipes of ``configs/paper/``: every YAML loads with the config loader, and its model, built
on the meta device (no memory), has about the nominal parameter count of its shape."""

from pathlib import Path

import pytest
import torch

from mcrnn.models import MCForCausalLM
from mcrnn.train.config import build_model_config, build_options, load_config

PAPER = Path(__file__).parents[2] / "configs" / "paper"
#: folder -> (nominal parameters, blocks, width, heads, peak lr, training tokens) of the paper's Table 6
SHAPES = {
    "760m": (760e6, 24, 1536, 16, 1.25e-3, 30e9),
    "1.3b": (1.3e9, 18, 2048, 8, 7e-4, 100e9),
}
#: the rows every shape has: Transformer++, and each memory's base, + GRM, + SSC (+ Memory Soup for the
#: deep memories), and Log-Linear++ (Fenwick segments + GRM) over every memory
ROWS = (
    "transformer", "swla", "swla_grm", "swla_ssc", "dla", "dla_grm", "dla_soup", "dla_ssc",
    "titans", "titans_grm", "titans_soup", "titans_ssc", "linear_loglinear_pp", "swla_loglinear_pp",
    "dla_loglinear_pp", "titans_loglinear_pp",
)
#: a nominal size names a shape (blocks x width x heads), shared by rows whose mixers differ: an MC layer
#: has six d x d projections against attention's four (plus a deep memory's initial weights), so the
#: rows of one shape spread over about 19% (docs/scaling.md lists every count); all lie within 25%
NOMINAL_TOLERANCE = 0.25
CONFIGS = sorted(PAPER.glob("*/*.yaml"))
SCALING_DOC = (Path(__file__).parents[2] / "docs" / "scaling.md").read_text(encoding="utf-8")


def test_every_shape_has_every_row():
    assert {path.parent.name for path in CONFIGS} == set(SHAPES)
    for shape in SHAPES:
        assert sorted(p.stem for p in CONFIGS if p.parent.name == shape) == sorted(ROWS)


def meta_parameter_count(model_section: dict) -> int:
    with torch.device("meta"):
        model = MCForCausalLM(build_model_config(model_section))
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_paper_config_loads_and_has_the_nominal_size(path):
    raw = load_config(path)
    nominal, blocks, width, heads, lr, tokens = SHAPES[path.parent.name]
    config = build_model_config(raw["model"])
    assert (config.num_hidden_layers, config.hidden_size, config.num_heads) == (blocks, width, heads)
    assert config.vocab_size == 32000 and config.segment_size in (None, 256)
    options = build_options(raw)
    assert options.lr == pytest.approx(lr) and options.weight_decay == pytest.approx(0.1)
    tokens_per_step = options.batch_size * raw["data"]["seq_len"]
    assert raw["data"]["seq_len"] == 4096 and tokens_per_step == 2**19  # 0.5M-token batches
    assert options.steps == -(-int(tokens) // tokens_per_step)
    assert options.precision == "bf16" and options.parallel == "fsdp" and options.activation_checkpointing
    count = meta_parameter_count(raw["model"])
    assert abs(count / nominal - 1) <= NOMINAL_TOLERANCE, f"{count:,} parameters for nominal {nominal:,.0f}"
    row = f"`{path.parent.name}/{path.name}`"
    assert any(
        line.startswith(f"| {row}") and f"| {count:,} |" in line for line in SCALING_DOC.splitlines()
    ), f"docs/scaling.md's estimate table must list {row} with its {count:,} parameters"
