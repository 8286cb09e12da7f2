"""lm-evaluation-harness 0.4.13 evaluates a saved mcrnn folder with the documented command
``lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True --tasks ... --batch_size N``,
offline, in a process that never imports mcrnn before loading the folder's code: a local jsonl
multiple-choice task (loglikelihoods, batch size 2, checked against the model's own) and RULER
``niah_single_1`` at 512 tokens (generation, batch size 1, checked against ``generate``)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mcrnn.data import ByteTokenizer
from mcrnn.models import MCConfig, MCForCausalLM

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is the 'eval' extra (make test installs it)")

MODEL = {"vocab_size": 257, "hidden_size": 32, "num_hidden_layers": 2, "num_heads": 2, "chunk_size": 4}
#: multiple choice: the prompt, the choices (of different lengths, so batches of 2 are padded) and
#: the index of the right one
QUESTIONS = [
    {"question": f"{a} + {b} =", "choices": [str(a + b), str(a + b + 1) + "0", "none"], "answer": a % 3}
    for a, b in [(1, 2), (3, 4), (10, 5), (7, 7), (2, 20)]
]
TASK_YAML = """\
task: mcrnn_tiny_sums
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random MC model saved with the byte tokenizer, whose end of document stops generation."""
    path = tmp_path_factory.mktemp("lm_eval") / "model"
    torch.manual_seed(0)
    eos = ByteTokenizer.eos_id  # generation stops at the tokenizer's end of document, per row
    model = MCForCausalLM(
        MCConfig(**MODEL, segment_size=16, aggregation="grm", eos_token_id=eos, pad_token_id=eos)
    )
    model.save_pretrained(path)
    ByteTokenizer().to_hf().save_pretrained(path)
    return path


def _lm_eval(model_dir: Path, out: Path, *args: str) -> tuple[dict, list[dict]]:
    """Run the documented ``lm_eval`` command offline; returns its results and logged samples."""
    nltk_data = out / "nltk_data"
    # RULER's data module downloads nltk's punkt_tab on import, which niah_single_1 never uses: a
    # stub makes it skip the download, so nothing is fetched
    (nltk_data / "tokenizers" / "punkt_tab").mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(out / "hf_home"),
        "NLTK_DATA": str(nltk_data),
        "TOKENIZERS_PARALLELISM": "false",
    }
    command = [
        sys.executable, "-m", "lm_eval", "--model", "hf",
        "--model_args", f"pretrained={model_dir},trust_remote_code=True",
        "--device", "cpu", "--output_path", str(out / "results"), "--log_samples", *args,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    (results,) = (out / "results").rglob("results_*.json")
    (samples,) = (out / "results").rglob("samples_*.jsonl")
    lines = samples.read_text(encoding="utf-8").splitlines()
    return json.loads(results.read_text(encoding="utf-8")), [json.loads(line) for line in lines]


def test_local_multiple_choice_task_batch_2(model_dir, tmp_path):
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS), encoding="utf-8")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "mcrnn_tiny_sums.yaml").write_text(TASK_YAML.format(data=data), encoding="utf-8")
    results, samples = _lm_eval(
        model_dir, tmp_path, "--tasks", "mcrnn_tiny_sums", "--include_path", str(tasks), "--batch_size", "2"
    )
    # every choice's loglikelihood is the model's own (right-padded batches of 2 change nothing)
    model, tokenizer = MCForCausalLM.from_pretrained(model_dir).eval(), ByteTokenizer()
    correct = []
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        question = QUESTIONS[sample["doc_id"]]
        expected = []
        for choice in question["choices"]:
            context, continuation = tokenizer.encode(question["question"]), tokenizer.encode(" " + choice)
            ids = torch.tensor([context + continuation])
            with torch.no_grad():
                logprobs = torch.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
            expected.append(
                logprobs[len(context) - 1 :].gather(-1, ids[0, len(context) :, None]).sum().item()
            )
        logged = [float(ll) for ll, _ in sample["filtered_resps"]]  # logged as strings
        assert logged == pytest.approx(expected, abs=1e-4)
        correct.append(float(max(range(3), key=expected.__getitem__) == question["answer"]))
    assert results["results"]["mcrnn_tiny_sums"]["acc,none"] == pytest.approx(sum(correct) / len(correct))


@pytest.mark.slow
def test_ruler_niah_single_1_at_512_tokens_batch_2(model_dir, tmp_path):
    """Generation at batch size 2: the harness left-pads the prompts; each answer must still equal the
    model's greedy continuation of its own prompt alone."""
    results, samples = _lm_eval(
        model_dir, tmp_path, "--tasks", "niah_single_1", "--metadata", '{"max_seq_lengths": [512]}',
        "--limit", "2", "--batch_size", "2",
    )
    score = results["results"]["niah_single_1"]["512,none"]
    assert 0.0 <= score <= 1.0
    assert len(samples) == 2
    # RULER sized each input with the byte tokenizer: input + 128 generated tokens <= 512; the
    # generated answer is the model's greedy continuation of input + answer prefix
    model, tokenizer = MCForCausalLM.from_pretrained(model_dir).eval(), ByteTokenizer()
    for sample in samples:
        assert len(tokenizer.encode(sample["doc"]["input"])) + 128 == sample["doc"]["length"] <= 512
        prompt = tokenizer.encode(sample["arguments"]["gen_args_0"]["arg_0"])
        ids = torch.tensor([prompt])
        generated = model.generate(
            ids, max_new_tokens=128, do_sample=False, eos_token_id=ByteTokenizer.eos_id
        )
        assert sample["resps"][0][0] == tokenizer.decode(generated[0, len(prompt) :].tolist())
