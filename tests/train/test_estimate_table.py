"""``mcrnn estimate --table``: docs/scaling.md's estimate table is what the command prints (issue 23.5)."""

import json
from pathlib import Path

import pytest

from mcrnn.cli import main
from mcrnn.train.estimate import GPUS, BlockActivations, estimate_setup, measure_block_activations, setup_of
from mcrnn.train.estimate_table import BEGIN, END, FITS, docs_block, load_fits, render_table, write_docs

ROOT = Path(__file__).parents[2]
PAPER = ROOT / "configs" / "paper"
SCALING = ROOT / "docs" / "scaling.md"


def test_docs_scaling_table_is_what_the_command_prints():
    """The table drifted from ``mcrnn estimate`` (Titans + GRM at 760M: 500 vs 610 bytes per token and
    unit width, 302 vs 366 GiB). Regenerated here from the configs and the committed block fits."""
    table = render_table(PAPER)
    assert docs_block(SCALING) == table, (
        "docs/scaling.md is stale: mcrnn estimate --table configs/paper --write-docs docs/scaling.md"
    )


def test_every_paper_config_has_a_committed_fit():
    configs = {p.relative_to(PAPER).as_posix() for p in PAPER.rglob("*.yaml")}
    fits = [row["config"] for row in load_fits(PAPER)]
    assert sorted(fits) == sorted(configs) and len(fits) == len(set(fits))


def test_a_row_is_the_single_config_estimate(capsys):
    """A row of the table carries the numbers ``mcrnn estimate --config`` prints for that config."""
    fit = next(row for row in load_fits(PAPER) if row["config"] == "760m/titans_grm.yaml")
    setup = setup_of(PAPER / fit["config"], gpus=32)
    acts = BlockActivations(fit["fixed"], fit["per_token"], fit["per_state_read"])
    found = estimate_setup(setup, gpus=32, gpu=GPUS["h100"], mfu=0.4, activations=acts)
    row = next(line for line in docs_block(SCALING) if "`760m/titans_grm.yaml`" in line)
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[2] == f"{found.block_bytes_per_token / 1536:.0f}"
    assert cells[3] == f"{found.total(False) / 2**30:.0f}" and cells[4] == f"{found.total(True) / 2**30:.1f}"


@pytest.mark.slow
def test_the_committed_fit_is_what_the_block_measures_today():
    """The fits are measured once and committed: a change of the layers that changes what a block saves
    must refit them (``mcrnn estimate --table configs/paper --refit --write-docs docs/scaling.md``).
    One deep row (the one that drifted) is measured again here (about 20 s)."""
    fit = next(row for row in load_fits(PAPER) if row["config"] == "760m/titans_grm.yaml")
    setup = setup_of(PAPER / fit["config"], gpus=32, precision=fit["precision"])
    measured = measure_block_activations(setup.config, fit["precision"])
    committed = BlockActivations(fit["fixed"], fit["per_token"], fit["per_state_read"])
    at_4096 = [acts.bytes_per_token(setup.config, 4096) for acts in (measured, committed)]
    assert at_4096[0] == pytest.approx(at_4096[1], rel=1e-3), "refit: the block saves another amount now"


def _tiny_folder(tmp_path: Path) -> Path:
    """A folder with one small config and a hand-written fit."""
    folder = tmp_path / "configs"
    folder.mkdir()
    text = (PAPER / "760m" / "transformer.yaml").read_text(encoding="utf-8")
    (folder / "tiny.yaml").write_text(text, encoding="utf-8")
    fit = {"config": "tiny.yaml", "precision": "bf16", "fixed": 1e6, "per_token": 9e4, "per_state_read": 0.0}
    (folder / FITS).write_text(json.dumps([fit]), encoding="utf-8")
    return folder


def test_write_docs_replaces_only_the_marked_block(tmp_path, capsys):
    folder = _tiny_folder(tmp_path)
    doc = tmp_path / "doc.md"
    doc.write_text(f"# title\n\nbefore\n{BEGIN}\n| old |\n{END}\nafter\n", encoding="utf-8")
    assert main(["estimate", "--table", str(folder), "--write-docs", str(doc)]) == 0
    table = render_table(folder)
    assert (
        doc.read_text(encoding="utf-8")
        == "\n".join(["# title", "", "before", BEGIN, *table, END, "after"]) + "\n"
    )
    assert len(table) == 3 and table[2].startswith("| `tiny.yaml` | 777,856,512 | 59 |")  # 9e4 / 1536
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".doc.md.tmp")]  # written atomically
    assert "wrote the table (1 rows)" in capsys.readouterr().out
    assert main(["estimate", "--table", str(folder)]) == 0
    assert capsys.readouterr().out.splitlines() == table


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--refit"], "--refit needs --table"),
        (["--table", "{folder}", "--config", "x.yaml"], "--table takes no --config"),
        (["--table", "{folder}", "--write-docs", "{doc}"], "has no line"),
        (["--table", "{tmp}"], f"--table: no {FITS} in"),
        ([], "give --config FILE (or --table FOLDER)"),
    ],
)
def test_table_errors_are_one_line(tmp_path, capsys, argv, message):
    folder = _tiny_folder(tmp_path)
    doc = tmp_path / "no_markers.md"
    doc.write_text("no markers\n", encoding="utf-8")
    argv = [a.format(folder=folder, doc=doc, tmp=tmp_path) for a in argv]
    assert main(["estimate", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mcrnn estimate: error: ") and message in err and err.count("\n") == 1
    assert doc.read_text(encoding="utf-8") == "no markers\n"


def test_write_docs_without_markers_leaves_the_file(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("text\n", encoding="utf-8")
    with pytest.raises(ValueError, match="has no line"):
        write_docs(doc, ["| x |"])
    assert doc.read_text(encoding="utf-8") == "text\n"


def test_refit_measures_each_config_in_its_own_process_and_saves_the_fits(tmp_path, capsys):
    """``--refit`` end to end on a small config: the fit is the one measured in this process, the fits
    file lists every YAML under the folder, and the table is rendered from it."""
    folder = tmp_path / "configs"
    (folder / "small").mkdir(parents=True)
    text = (PAPER / "760m" / "titans_grm.yaml").read_text(encoding="utf-8")
    for key, value in (
        ("hidden_size: 1536", "hidden_size: 32"),
        ("num_heads: 16", "num_heads: 2"),
        ("num_hidden_layers: 24", "num_hidden_layers: 2"),
        ("vocab_size: 32000", "vocab_size: 64"),
        ("segment_size: 256", "segment_size: 16"),
        ("seq_len: 4096", "seq_len: 64"),
    ):
        text = text.replace(key, value)
    (folder / "small" / "titans_grm.yaml").write_text(text, encoding="utf-8")
    assert main(["estimate", "--table", str(folder), "--refit"]) == 0
    fits = load_fits(folder)
    assert [row["config"] for row in fits] == ["small/titans_grm.yaml"] and fits[0]["precision"] == "bf16"
    setup = setup_of(folder / "small" / "titans_grm.yaml", gpus=32)
    here = measure_block_activations(setup.config, "bf16")
    committed = BlockActivations(fits[0]["fixed"], fits[0]["per_token"], fits[0]["per_state_read"])
    assert committed.bytes_per_token(setup.config, 64) == pytest.approx(
        here.bytes_per_token(setup.config, 64)
    )
    assert capsys.readouterr().out.splitlines()[-3:] == render_table(folder)
    assert sorted(p.name for p in folder.iterdir()) == [FITS, "small"]  # no temporary file left
