"""``mcrnn train`` from a saved transformers model with a retrofit section and ``trainable: router``:
only the learned router trains (the backbone of every checkpoint is bit-identical to the source
folder's), checkpoints reload with MC on, resume restores router and optimizer, and the config errors
are one line."""

import json
import sys
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from safetensors.torch import load_file

from mcrnn.cli import main
from mcrnn.retrofit import CONFIG_KEY

sys.path.insert(0, str(Path(__file__).parents[1] / "retrofit"))
from tiny import VOCAB, tiny_model  # noqa: E402

DATA = {"type": "mqar", "vocab_size": VOCAB, "num_pairs": 4, "seq_len": 24, "num_examples": 32}
RETROFIT = {"segment_size": 4, "aggregation": "grm", "router": "learned"}
TRAIN = {"batch_size": 4, "warmup_steps": 0, "lr": 0.05, "progress": False, "trainable": "router"}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("src") / "qwen"
    tiny_model("qwen3_5_text").save_pretrained(folder)
    return folder


def _config(tmp_path, source, *, retrofit=RETROFIT, train=None, steps=3, model=None) -> Path:
    raw = {
        "model": model if model is not None else {"pretrained": str(source)},
        "retrofit": retrofit,
        "data": DATA,
        "train": {**TRAIN, "steps": steps, "out_dir": str(tmp_path / "run"), **(train or {})},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _checkpoint(tmp_path, step: int) -> Path:
    return tmp_path / "run" / "checkpoints" / f"step_{step:08d}"


def test_router_only_training_keeps_the_backbone_and_reloads_with_mc(tmp_path, source, capsys):
    assert main(["train", "--config", str(_config(tmp_path, source))]) == 0, capsys.readouterr().err
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in metrics]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    ckpt = _checkpoint(tmp_path, 3)
    original, saved = load_file(source / "model.safetensors"), load_file(ckpt / "model.safetensors")
    changed = sorted(name for name in saved if name not in original)
    assert changed and all(".mc_router." in name for name in changed)
    for name, tensor in original.items():  # the backbone: bit for bit
        assert torch.equal(saved[name], tensor), name
    assert any(saved[name].abs().sum() > 0 for name in changed if name.endswith("gate"))  # it trained
    config = json.loads((ckpt / "config.json").read_text())
    assert config[CONFIG_KEY]["router"] == "learned"
    loaded = transformers.AutoModelForCausalLM.from_pretrained(ckpt, trust_remote_code=True).eval()
    assert type(loaded).__name__.endswith("WithMemoryCaching")
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, saved[name], atol=0, rtol=0)
    plain = transformers.AutoModelForCausalLM.from_pretrained(source).eval()
    ids = torch.randint(2, VOCAB, (2, 21), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        with_mc, without = loaded(ids).logits, plain(ids).logits
    assert not torch.allclose(with_mc, without, atol=1e-4)  # the trained router is in the read


def test_resume_restores_router_and_optimizer(tmp_path, source, capsys):
    constant = {"min_lr_ratio": 1.0}  # the schedule does not depend on `steps`: --steps 2 stops early
    straight = tmp_path / "straight"
    straight.mkdir()
    config = _config(straight, source, steps=4, train=constant)
    assert main(["train", "--config", str(config)]) == 0, capsys.readouterr().err
    split = tmp_path / "split"
    split.mkdir()
    config = _config(split, source, steps=4, train={**constant, "save_every": 2})
    assert main(["train", "--config", str(config), "--steps", "2"]) == 0, capsys.readouterr().err
    state = torch.load(_checkpoint(split, 2) / "trainer_state.pt", weights_only=True)
    routers = [n for n in load_file(_checkpoint(split, 2) / "model.safetensors") if ".mc_router." in n]
    assert len(state["optimizer"]["state"]) == len(routers)  # the optimizer holds the router alone
    assert main(["train", "--config", str(config), "--resume"]) == 0, capsys.readouterr().err
    a = load_file(_checkpoint(straight, 4) / "model.safetensors")
    b = load_file(_checkpoint(split, 4) / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=0)
    lines = (split / "run" / "metrics.jsonl").read_text().splitlines()
    straight_lines = (straight / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["loss"] for x in lines][-1] == pytest.approx(json.loads(straight_lines[-1])["loss"])


def _error(tmp_path, capsys, config: Path) -> str:
    capsys.readouterr()
    code = main(["train", "--config", str(config)])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' loading bar
    assert code == 2 and err.startswith("mcrnn train: error: "), err
    return err


def test_router_without_learned_router_is_one_line(tmp_path, source, capsys):
    config = _config(tmp_path, source, retrofit={**RETROFIT, "router": "query"})
    assert "train.trainable: 'router' needs a learned router" in _error(tmp_path, capsys, config)


def test_unknown_keys_name_the_closest(tmp_path, source, capsys):
    config = _config(tmp_path, source, retrofit={**RETROFIT, "segment_len": 4})
    err = _error(tmp_path, capsys, config)
    assert "retrofit: unknown key 'segment_len'; did you mean 'segment_size'?" in err
    config = _config(tmp_path, source, model={"pretrained": str(source), "hidden_size": 8})
    assert "unknown key 'hidden_size'" in _error(tmp_path, capsys, config)
    config = _config(tmp_path, source, train={"trainable": "routers"})
    assert "trainable must be one of ('all', 'router'), got 'routers'" in _error(tmp_path, capsys, config)


def test_train_mode_keeps_memory_caching(source):
    """transformers re-kernelizes on ``train()``/``eval()`` when ``kernels`` is installed, which dropped
    the MC forwards: training ran the host's read and the router got no gradient."""
    from mcrnn.retrofit import add_memory_caching, freeze_backbone, remove_memory_caching

    model = transformers.AutoModelForCausalLM.from_pretrained(source)
    add_memory_caching(model, **RETROFIT)
    freeze_backbone(model)
    ids = torch.randint(2, VOCAB, (2, 12), generator=torch.Generator().manual_seed(2))
    for mode in (True, False, True):
        model.train(mode)
        assert all("forward" in m.__dict__ for m in model.modules() if hasattr(m, "mc_router"))
        assert model(ids).logits.requires_grad  # through the router's gate
    remove_memory_caching(model)
    assert "train" not in model.__dict__


def test_the_documented_config_runs(tmp_path, source, capsys):
    """The example of docs/retrofit.md, with its folder pointed at the tiny model and 2 steps."""
    text = (Path(__file__).parents[2] / "docs" / "retrofit.md").read_text()
    block = next(b.split("\n", 1)[1] for b in text.split("```yaml")[1:] if "pretrained:" in b)
    raw = yaml.safe_load(block.split("```")[0])
    raw["model"]["pretrained"] = str(source)
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(raw))
    flags = ["--steps", "2", "--out-dir", str(tmp_path / "run")]
    assert main(["train", "--config", str(path), *flags]) == 0, capsys.readouterr().err
    assert (_checkpoint(tmp_path, 2) / "modeling_mcrnn_retrofit.py").is_file()
