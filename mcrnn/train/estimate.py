"""What a training config costs: parameters, memory per GPU, tokens/s at a stated MFU, GPU-hours.

**Parameters** are counted on a model built on the meta device (no memory).

**Memory per GPU** (bytes; ``N`` parameters, ``W`` GPUs, FSDP2 shards over all of them, DDP replicates):

- weights ``4N/W``, gradients ``4N/W``, AdamW states ``8N/W`` (fp32 master weights, fp32 gradients, two
  fp32 moments: bf16 autocast computes in bf16 but keeps fp32 parameters); DDP: ``W = 1`` plus ``4N`` of
  gradient buckets;
- FSDP2 gathers: the root's own parameters (embedding, LM head, final norm) and two blocks (the one
  running and the one prefetched) unsharded in fp32;
- activations of one micro-batch of ``b`` sequences of ``T`` tokens: ``L * A`` for ``L`` blocks, with
  ``A = A0 + b T (a + a_n n(T))`` the bytes one block saves for its backward (``n(T)``: cached states a
  token reads on average), plus the head: ``8 d`` per token (the final norm's input and output) and
  ``b T V (2 + 4 + 4 + 2)`` for the logits (bf16 under autocast, the fp32 log-softmax autograd saves,
  its fp32 gradient and the bf16 cast of it; ``4 + 4 + 4`` in fp32). With activation checkpointing a
  block keeps only its input (``4 d`` bytes per token, the fp32 residual stream) and the backward
  holds one block's full activations at a time: ``L b T 4d + A``;
- the backward's working set: the gradients of one block's intermediate tensors while it runs its
  backward, about its saved activations again, ``A``.

``A0, a, a_n`` are *measured*, not derived: one block of the config (its real width, heads, memory,
segments) runs forward on the CPU at batch 1 and lengths ``2S, 4S, 8S`` (``S`` the segment length,
256 when there is none; one segment alone takes a shorter path, so ``S`` itself would bias the fit),
under bf16 autocast for ``precision: bf16``; the bytes of the distinct tensors autograd saves
(parameters excluded) are fitted by least squares. ``a_n`` carries what grows with the number of
cached states each token reads (the reads of ``grm``/``soup`` over every earlier segment).
The CPU runs PyTorch's paths: the GPU's fused kernels may save less (they recompute instead).

**Tokens/s** ``= MFU * peak / F`` with ``F`` the model flops per token of training (3 x forward: the
backward costs twice the forward), from DESIGN.md §8's cost model: ``2`` flops per weight of every
matmul (``N`` minus the input embedding, which is a lookup), plus per block and head of dim ``D``:

- causal attention ``2 T D`` (average prefix ``T/2``, q.k and p.v);
- a matrix memory's chunked update and read ``4 c D + 4 D^2`` (inner chunk ``c``), and ``2 D^2`` per
  cached state read (``grm``, ``soup``, ``residual``, ``average``: all earlier segments; ``ssc``:
  ``top_k``; ``log``: one per Fenwick level);
- a deep memory (expansion ``E``): read ``4 E D^2`` per state read, the update ``12 E D^2`` per token
  (the memory's forward, its backward to the hidden layer and to the weights; our assumption, §8
  gives only the read); ``soup`` mixes the cached parameters, ``4 E D^2`` per state, like a read.

Activation checkpointing adds one forward: at the same hardware utilisation the stated MFU (model flops,
without the recompute) becomes ``3/4`` of it, and the tokens/s printed say which they assume.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

import torch

from mcrnn.utils.arguments import positive_int


@dataclass(frozen=True)
class GPU:
    """A GPU's dense bf16 peak (flop/s) and memory (bytes)."""

    name: str
    peak_flops: float
    memory_bytes: float


GPUS = {
    "h100": GPU("H100 SXM 80GB", 989e12, 80e9),
    "h200": GPU("H200 141GB", 989e12, 141e9),
    "a100": GPU("A100 SXM 80GB", 312e12, 80e9),
}
#: bytes per logit element alive around the loss: the logits (bf16 under autocast), the fp32
#: log-softmax autograd saves, and in the backward its fp32 gradient (cast to bf16 for the LM head)
LOGIT_BYTES = {"bf16": 2 + 4 + 4 + 2, "fp32": 4 + 4 + 4}

EXAMPLES = """
  mcrnn estimate --config configs/paper/760m/titans_grm.yaml --gpu h100 --gpus 32
  mcrnn estimate --config configs/paper/1.3b/transformer.yaml --gpu a100 --gpus 64 --mfu 0.35
  mcrnn estimate --config cfg.yaml --model hidden_size=64 --model num_hidden_layers=2 --seq-len 512 --measure
"""


def parameter_counts(config) -> tuple[int, int]:
    """``(all parameters, input-embedding parameters)`` of ``MCForCausalLM(config)``, built on meta."""
    from mcrnn.models import MCForCausalLM

    with torch.device("meta"):
        model = MCForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    return total, model.model.embed_tokens.weight.numel()


def block_parameter_count(config) -> int:
    """Parameters of one block (layer 0)."""
    from mcrnn.models.modeling_mcrnn import MCBlock

    with torch.device("meta"):
        return sum(p.numel() for p in MCBlock(config, 0).parameters())


def states_read_per_token(config, seq_len: int) -> float:
    """Mean over the ``seq_len`` tokens of the cached states (not the online one) a token reads."""
    if config.mixer_of(0) == "attention":
        return 0.0
    spec = config.mc_spec
    if spec.kind == "log":  # one state per Fenwick level but the online one: popcount(t + 1) - 1
        return sum(bin(t).count("1") - 1 for t in range(1, seq_len + 1)) / seq_len
    if spec.kind != "constant":
        return 0.0  # the base RNN (explicit segment lengths: not modelled, treated as one segment)
    earlier = [t // spec.segment_size for t in range(seq_len)]
    if spec.aggregation == "ssc":
        earlier = [min(n, spec.top_k) for n in earlier]
    return sum(earlier) / seq_len


def mixer_forward_flops(config, seq_len: int) -> float:
    """Forward flops per token of one block's mixer beyond its projections (DESIGN.md §8)."""
    heads = config.num_heads
    dim = config.head_dim or config.hidden_size // heads
    if config.mixer_of(0) == "attention":
        return heads * 2 * seq_len * dim
    reads = states_read_per_token(config, seq_len)
    if config.memory in ("dla", "titans"):
        unit = 4 * config.memory_expansion * dim * dim  # one read of the MLP memory
        return heads * (unit + 3 * unit + reads * unit)  # online read, update, cached reads (or mixing)
    from mcrnn.ops.spec import check_memory

    chunk = check_memory(config.mc_spec, config.memory, config.chunk_size)
    return heads * (4 * chunk * dim + 4 * dim * dim + reads * 2 * dim * dim)


def training_flops_per_token(config, seq_len: int) -> float:
    """Model flops of training per token: ``3 x (2 x matmul weights + mixer)`` (see the module doc)."""
    total, embedding = parameter_counts(config)
    matmul_weights = total - embedding + (embedding if config.tie_word_embeddings else 0)
    mixers = config.num_hidden_layers * mixer_forward_flops(config, seq_len)
    return 3 * (2 * matmul_weights + mixers)


def _saved_bytes(run, exclude: set[int] = frozenset()) -> int:
    """Bytes of the distinct storages autograd saves while ``run()`` computes (one forward), but those
    whose ``data_ptr`` is in ``exclude`` (the parameters, which are counted as weights)."""
    storages: dict[int, torch.UntypedStorage] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in exclude:
            # held until the end, so that no later tensor reuses the address and is taken for this one
            storages[storage.data_ptr()] = storage
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(storage.nbytes() for storage in storages.values())


@dataclass(frozen=True)
class BlockActivations:
    """Bytes one block saves for its backward over ``b`` sequences of ``T`` tokens:
    ``fixed + b * T * (per_token + per_state_read * n(T))``, ``n(T)`` the cached states a token reads on
    average (:func:`states_read_per_token`)."""

    fixed: float
    per_token: float
    per_state_read: float

    def bytes_per_token(self, config, seq_len: int) -> float:
        return self.per_token + self.per_state_read * states_read_per_token(config, seq_len)

    def total(self, config, seq_len: int, batch: int) -> float:
        return self.fixed + batch * seq_len * self.bytes_per_token(config, seq_len)


def measure_block_activations(
    config, precision: str = "bf16", max_bytes: float = 6 * 2**30
) -> BlockActivations:
    """Fit :class:`BlockActivations` to one block of ``config`` run forward on the CPU at batch 1 and
    lengths ``2S, 4S, 8S`` (``S`` the segment length, 256 without one) by least squares. A block whose
    saved tensors at ``2S`` show that ``8S`` would pass ``max_bytes`` is an error naming the size."""
    import numpy as np

    from mcrnn.models.modeling_mcrnn import MCBlock

    spec = config.mc_spec
    span = spec.segment_size if spec.kind == "constant" else 256
    torch.manual_seed(0)
    block = MCBlock(config, 0).train()
    params = {p.untyped_storage().data_ptr() for p in block.parameters()}
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    rows, sizes = [], []
    for length in (2 * span, 4 * span, 8 * span):
        hidden = torch.randn(1, length, config.hidden_size, requires_grad=True)
        with amp:
            sizes.append(_saved_bytes(lambda h=hidden: block(h), params))
        rows.append([1.0, length, length * states_read_per_token(config, length)])
        if 4 * sizes[0] > max_bytes:  # 8S keeps at least 4 times what 2S keeps
            raise ValueError(
                f"measuring the activations of one block would take over {max_bytes / 2**30:.0f} GiB: it "
                f"keeps {sizes[0] / length / config.hidden_size:.0f} x d bytes per token at {length} tokens"
            )
    fixed, per_token, per_state = np.linalg.lstsq(np.array(rows), np.array(sizes, dtype=float), rcond=None)[0]
    return BlockActivations(float(fixed), float(per_token), float(per_state))


@dataclass
class Estimate:
    """Everything :func:`estimate` works out; bytes are per GPU."""

    parameters: int
    embedding_parameters: int
    weights: float
    gradients: float
    optimizer: float
    gathered: float
    activations: float
    activations_checkpointed: float
    head_saved: float
    logits: float
    backward_working: float
    block_bytes_per_token: float
    flops_per_token: float
    tokens_per_second_per_gpu: float
    tokens: float
    gpu_hours: float

    def total(self, checkpointing: bool) -> float:
        acts = self.activations_checkpointed if checkpointing else self.activations
        static = self.weights + self.gradients + self.optimizer + self.gathered
        return static + acts + self.logits + self.backward_working


def estimate(
    config,
    *,
    seq_len: int,
    micro_batch_size: int,
    gpus: int,
    gpu: GPU,
    mfu: float,
    tokens: float,
    parallel: str = "fsdp",
    precision: str = "bf16",
    checkpointing: bool = True,
    activations: BlockActivations | None = None,
) -> Estimate:
    """The estimate of the module doc for ``micro_batch_size`` sequences of ``seq_len`` per GPU.

    ``activations``: the block's fit (:func:`measure_block_activations`, measured here when None).
    FSDP2 over ``gpus > 1`` gathers ``4 (N - L P + 2 P)`` bytes (``P`` the parameters of one block: the
    root's own and two blocks, fp32); checkpointing scales the tokens/s by ``3/4``."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu}")
    total, embedding = parameter_counts(config)
    shards = gpus if parallel == "fsdp" else 1
    gathered = 0.0
    if parallel == "fsdp" and gpus > 1:
        block = block_parameter_count(config)
        root = total - config.num_hidden_layers * block
        gathered = 4.0 * (root + 2 * block)
    block_acts = activations or measure_block_activations(config, precision)
    per_token = block_acts.bytes_per_token(config, seq_len)
    one_block = block_acts.total(config, seq_len, micro_batch_size)
    tokens_micro = micro_batch_size * seq_len
    layers = config.num_hidden_layers
    flops = training_flops_per_token(config, seq_len)
    speed = mfu * gpu.peak_flops / flops * (0.75 if checkpointing else 1.0)
    return Estimate(
        parameters=total,
        embedding_parameters=embedding,
        weights=4.0 * total / shards,
        gradients=4.0 * total / shards + (4.0 * total if parallel == "ddp" and gpus > 1 else 0.0),
        optimizer=8.0 * total / shards,
        gathered=gathered,
        activations=layers * one_block,
        activations_checkpointed=layers * tokens_micro * 4 * config.hidden_size + one_block,
        head_saved=tokens_micro * (8 * config.hidden_size + 4 * config.vocab_size),
        logits=tokens_micro * (8 * config.hidden_size + LOGIT_BYTES[precision] * config.vocab_size),
        backward_working=one_block,
        block_bytes_per_token=per_token,
        flops_per_token=flops,
        tokens_per_second_per_gpu=speed,
        tokens=tokens,
        gpu_hours=tokens / speed / 3600.0,
    )


def measure_cpu_step(config, *, seq_len: int, micro_batch_size: int, precision: str = "fp32") -> dict:
    """One training step of ``config`` on the CPU, measured: the bytes autograd saves over the whole
    model and loss (the activations and logits of the model above), and the peak resident memory the
    step adds (``ru_maxrss`` after the step minus the resident memory before the model is built; run
    it in a fresh process, where the import peak lies below that baseline)."""
    import resource

    import torch.nn.functional as F

    from mcrnn.models import MCForCausalLM

    def rss() -> float:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * resource.getpagesize()

    before = rss()
    torch.manual_seed(0)
    model = MCForCausalLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, config.vocab_size, (micro_batch_size, seq_len))
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    holder = {}

    def forward() -> None:
        with amp:
            logits = model(ids).logits
        holder["loss"] = F.cross_entropy(logits.float().flatten(0, 1), ids.flatten())

    saved = _saved_bytes(forward, {p.untyped_storage().data_ptr() for p in model.parameters()})
    holder.pop("loss").backward()
    optimizer.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0
    return {"saved_bytes": float(saved), "peak_rss_added": peak - before}


def _model_overrides(items: list[str]) -> dict:
    """``KEY=VALUE`` pairs of ``--model``, each value read as YAML (``64``, ``true``, ``grm``)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model takes KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


@dataclass(frozen=True)
class Setup:
    """What one estimate is of: a config file's model and training options with the overrides given."""

    path: str
    config: object
    options: object
    seq_len: int
    micro_batch_size: int
    tokens: float
    precision: str


def setup_of(
    path,
    *,
    gpus: int,
    model: list[str] = (),
    seq_len: int | None = None,
    micro_batch_size: int | None = None,
    precision: str | None = None,
    tokens: float | None = None,
) -> Setup:
    """The :class:`Setup` of the training config at ``path``; every ``None`` takes the config's value
    (the micro-batch: ``train.micro_batch_size``, else ``batch_size / gpus``; the tokens: steps x batch x
    length; the precision: ``fp32`` for ``precision: fp32``, else ``bf16``)."""
    from mcrnn.train.config import build_model_config, build_options, load_config

    raw = load_config(path)
    config = build_model_config({**raw["model"], **_model_overrides(list(model))})
    options = build_options(raw)
    seq_len = seq_len or int(raw["data"].get("seq_len", 0))
    if seq_len < 1:
        raise ValueError("data.seq_len is missing: give --seq-len")
    micro = micro_batch_size or options.micro_batch_size or max(options.batch_size // gpus, 1)
    return Setup(
        path=str(path),
        config=config,
        options=options,
        seq_len=seq_len,
        micro_batch_size=micro,
        tokens=tokens or float(options.steps) * options.batch_size * seq_len,
        precision=precision or ("fp32" if options.precision == "fp32" else "bf16"),
    )


def estimate_setup(
    setup: Setup,
    *,
    gpus: int,
    gpu: GPU,
    mfu: float,
    activations: BlockActivations | None = None,
    checkpointing: bool | None = None,
) -> Estimate:
    """:func:`estimate` of ``setup`` (``checkpointing``: the config's unless given)."""
    options = setup.options
    return estimate(
        setup.config,
        seq_len=setup.seq_len,
        micro_batch_size=setup.micro_batch_size,
        gpus=gpus,
        gpu=gpu,
        mfu=mfu,
        tokens=setup.tokens,
        parallel=options.parallel,
        precision=setup.precision,
        checkpointing=options.activation_checkpointing if checkpointing is None else checkpointing,
        activations=activations,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML training config (model / data / train sections)")
    parser.add_argument("--gpu", default="h100", choices=sorted(GPUS), help="GPU type")
    parser.add_argument("--gpus", type=positive_int, default=32, help="GPUs in all (the world size)")
    parser.add_argument("--mfu", type=float, default=0.4, help="model-flops utilisation assumed, in (0, 1]")
    parser.add_argument("--model", action="append", default=[], help="override a model key: KEY=VALUE")
    parser.add_argument("--seq-len", type=positive_int, help="override data.seq_len")
    parser.add_argument("--micro-batch-size", type=positive_int, help="override train.micro_batch_size")
    parser.add_argument("--precision", choices=("bf16", "fp32"), help="override train.precision")
    parser.add_argument("--tokens", type=float, help="training tokens (default: steps x batch x seq_len)")
    parser.add_argument(
        "--measure", action="store_true", help="also run one step on the CPU and print its measured memory"
    )
    parser.add_argument(
        "--print-fit", action="store_true", help="only measure the block of --config; print its fit as JSON"
    )
    table = parser.add_argument_group("the table of docs/scaling.md (mcrnn.train.estimate_table)")
    table.add_argument(
        "--table",
        metavar="FOLDER",
        help="print the table of the configs listed in FOLDER/block_activations.json (instead of --config)",
    )
    table.add_argument(
        "--refit", action="store_true", help="with --table: measure every block again (one process each)"
    )
    table.add_argument(
        "--write-docs", metavar="FILE", help="with --table: replace the table between its markers in FILE"
    )


def run(args: argparse.Namespace) -> int:
    if args.table:
        from mcrnn.train.estimate_table import run_table

        return run_table(args)
    if args.refit or args.write_docs:
        raise ValueError(f"--{'refit' if args.refit else 'write-docs'} needs --table")
    if not args.config:
        raise ValueError("give --config FILE (or --table FOLDER)")
    setup = setup_of(
        args.config,
        gpus=args.gpus,
        model=args.model,
        seq_len=args.seq_len,
        micro_batch_size=args.micro_batch_size,
        precision=args.precision,
        tokens=args.tokens,
    )
    if args.print_fit:
        print(json.dumps(asdict(measure_block_activations(setup.config, setup.precision))))
        return 0
    # before anything else runs: the measured peak is the process's high-water mark
    measured = (
        measure_cpu_step(
            setup.config,
            seq_len=setup.seq_len,
            micro_batch_size=setup.micro_batch_size,
            precision=setup.precision,
        )
        if args.measure
        else None
    )
    gpu = GPUS[args.gpu]
    found = estimate_setup(setup, gpus=args.gpus, gpu=gpu, mfu=args.mfu)
    print_estimate(setup, found, gpus=args.gpus, gpu=gpu, mfu=args.mfu)
    if measured is not None:
        single = estimate_setup(setup, gpus=1, gpu=gpu, mfu=args.mfu, checkpointing=False)
        saved = single.activations + single.head_saved
        gib = 2.0**30
        print(
            f"measured on the CPU, one process: autograd saved {measured['saved_bytes'] / gib:.3f} GiB "
            f"(model {saved / gib:.3f}); peak resident memory added "
            f"{measured['peak_rss_added'] / gib:.3f} GiB "
            f"(model, one device, no checkpointing: {single.total(False) / gib:.3f})"
        )
    return 0


def print_estimate(setup: Setup, found: Estimate, *, gpus: int, gpu: GPU, mfu: float) -> None:
    """The estimate as ``mcrnn estimate`` prints it."""
    gib = 2.0**30
    config, options = setup.config, setup.options
    shape = f"{config.num_hidden_layers} blocks x {config.hidden_size}"
    print(f"config: {setup.path} ({shape}, {options.parallel})")
    print(f"parameters: {found.parameters:,} ({found.embedding_parameters:,} in the input embedding)")
    print(
        f"memory per GPU ({gpus} x {gpu.name}, micro-batch {setup.micro_batch_size} x {setup.seq_len} "
        f"tokens, {setup.precision}):"
    )
    rows = [
        ("weights (fp32)", found.weights),
        ("gradients (fp32)", found.gradients),
        ("AdamW states (fp32)", found.optimizer),
        ("FSDP gathered parameters", found.gathered),
        ("activations, no checkpointing", found.activations),
        ("activations, checkpointing", found.activations_checkpointed),
        ("head, logits and loss", found.logits),
        ("backward working set (one block)", found.backward_working),
    ]
    for name, value in rows:
        print(f"  {name:<32} {value / gib:9.2f} GiB")
    per_d = found.block_bytes_per_token / config.hidden_size
    print(f"  (a block keeps {per_d:.1f} x d bytes per token at length {setup.seq_len})")
    for label, flag in (("without", False), ("with", True)):
        total = found.total(flag)
        verdict = "fits" if total <= 0.9 * gpu.memory_bytes else "does NOT fit"
        print(
            f"  total {label} checkpointing{'':<14} {total / gib:9.2f} GiB ({verdict} in 90% of {gpu.name})"
        )
    speed = found.tokens_per_second_per_gpu
    print(f"model flops per token: {found.flops_per_token / 1e9:.2f} GFLOP (3 x forward, DESIGN.md §8)")
    note = ", 3/4 of it with activation checkpointing" if options.activation_checkpointing else ""
    print(f"tokens/s per GPU at MFU {mfu:g}{note}: {speed:,.0f}; {speed * gpus:,.0f} in all")
    days = found.gpu_hours / gpus / 24
    print(
        f"{setup.tokens / 1e9:.4g}B tokens: {found.gpu_hours:,.0f} GPU-hours ({days:.1f} days on {gpus} GPUs)"
    )
