"""The training loop: AdamW, warmup + cosine, clipping, accumulation, bf16 autocast, DDP/FSDP2,
periodic evaluation, JSON-lines metrics, atomic checkpoints and exact resumption.

Loss of one optimizer step over its global batch: ``L = sum_{labelled (b,t)} CE_{b,t} / N_step``, with
``N_step`` the number of labelled tokens in the whole global batch (all processes, all micro-batches).
Each micro-batch back-propagates ``world * sum CE / N_step`` (DDP averages gradients over processes),
so the gradient equals that of one process on the whole batch, whatever the split.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from mcrnn.data import IGNORE_INDEX
from mcrnn.retrofit import freeze_backbone
from mcrnn.train import distributed as D
from mcrnn.train.checkpoint import (
    CONFIG_FILE,
    RUN_FILE,
    latest_checkpoint,
    read_checkpoint,
    read_run_info,
    save_checkpoint,
)
from mcrnn.train.evaluate import evaluate_lm, lm_logits
from mcrnn.train.metrics import MetricsWriter, write_loss_plot
from mcrnn.train.options import TrainOptions
from mcrnn.train.out_dir import check_out_dir, hold_out_dir, remove_run_outputs
from mcrnn.train.sampler import rank_micro_batches

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase


@dataclass
class TrainResult:
    """What a run produced: per-step training losses (from ``start_step``), evaluations, timing."""

    losses: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    start_step: int = 0
    train_seconds: float = 0.0
    tokens_per_second: float = 0.0
    checkpoint: str | None = None


def lr_factor(step: int, options: TrainOptions) -> float:
    """``step/warmup`` during warmup, then ``r + (1-r)(1+cos(pi p))/2`` with progress ``p`` in [0, 1]."""
    if step < options.warmup_steps:
        return (step + 1) / options.warmup_steps
    span = max(options.steps - options.warmup_steps, 1)
    progress = min((step - options.warmup_steps) / span, 1.0)
    r = options.min_lr_ratio
    return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, options: TrainOptions) -> torch.optim.AdamW:
    """AdamW with weight decay on parameters of rank >= 2 (matrices), none on vectors (norms, biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": options.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=options.lr, betas=options.betas, eps=options.eps)


def select_trainable(model: nn.Module, trainable: str) -> None:
    """``trainable="router"``: only the learned routers' parameters keep ``requires_grad``
    (:func:`~mcrnn.retrofit.freeze_backbone`); ``"all"`` leaves the model as it is."""
    if trainable != "router":
        return
    try:
        freeze_backbone(model)
    except ValueError:
        raise ValueError(
            "train.trainable: 'router' needs a learned router; add `retrofit: {router: learned, ...}`"
        ) from None


def check_vocab(model: nn.Module, dataset: Dataset) -> None:
    """Fail early, naming ``vocab_size``, when the data holds ids the model cannot embed."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is None:
        return
    probe = [dataset[i] for i in range(min(len(dataset), 64))]
    top = max(int(torch.max(item["input_ids"].max(), item["labels"].max())) for item in probe)
    if top >= vocab:
        raise ValueError(f"model vocab_size={vocab} is smaller than the data's largest id {top}")


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block in the backward (non-reentrant ``torch.utils.checkpoint``, which FSDP2 and
    DDP accept); ``model`` must be a Hugging Face model that supports it (:class:`MCForCausalLM` does)."""
    enable = getattr(model, "activation_checkpointing_enable", None) or getattr(
        model, "gradient_checkpointing_enable", None
    )  # transformers >= 5.x renamed it; the old name warns
    if enable is None or not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"activation_checkpointing: {type(model).__name__} does not support it")
    enable({"use_reentrant": False})


#: config entries that describe the file, not the model (ignored when a resume compares configs)
_CONFIG_METADATA = (
    "transformers_version",
    "_name_or_path",
    "architectures",
    "dtype",
    "torch_dtype",
    "auto_map",
)


def config_differences(config, checkpoint: Path) -> list[str]:
    """``key (checkpoint value -> config value)`` for every model-config entry that differs from the
    ``config.json`` of ``checkpoint``."""
    saved = type(config).from_json_file(checkpoint / CONFIG_FILE).to_dict()
    current = config.to_dict()
    keys = sorted((set(saved) | set(current)) - set(_CONFIG_METADATA))
    return [f"{k} ({saved.get(k)!r} -> {current.get(k)!r})" for k in keys if saved.get(k) != current.get(k)]


def section_differences(saved: dict, current: dict) -> list[str]:
    """``key (saved value -> current value)`` for every key of two config sections that differs (a
    missing key counts as None)."""
    keys = sorted(set(saved) | set(current), key=str)
    return [f"{k} ({saved.get(k)!r} -> {current.get(k)!r})" for k in keys if saved.get(k) != current.get(k)]


def data_kind(dataset: Dataset) -> str:
    """Short name of the training data's kind, recorded in checkpoints: ``TextDataset`` -> ``text``."""
    name = type(dataset).__name__
    return name.removesuffix("Dataset").lower() or name


def hf_tokenizer(dataset: Dataset) -> PreTrainedTokenizerBase | None:
    """The ``transformers`` form of the dataset's tokenizer (``tokenizer.to_hf()``), saved with every
    checkpoint; None for data without a tokenizer (MQAR) or a tokenizer without that form, and, with a
    warning, when the tokenizer cannot be loaded (token shards name theirs in their index)."""
    try:
        to_hf = getattr(getattr(dataset, "tokenizer", None), "to_hf", None)
        return to_hf() if to_hf is not None else None
    except (OSError, ValueError) as err:  # e.g. token shards whose Hugging Face tokenizer is gone
        print(
            f"warning: checkpoints will carry no tokenizer ({' '.join(str(err).split())[:200]})",
            file=sys.stderr,
        )
        return None


def micro_batch_size(options: TrainOptions, world: int) -> int:
    """Sequences per forward pass and process: ``micro_batch_size`` or ``batch_size / world``; an error
    names the option when the global batch does not split evenly."""
    per_rank, rem = divmod(options.batch_size, world)
    if rem:
        raise ValueError(f"batch_size={options.batch_size} must be divisible by the world size {world}")
    micro = options.micro_batch_size or per_rank
    if per_rank % micro:
        raise ValueError(f"batch_size / world = {per_rank} must be a multiple of micro_batch_size={micro}")
    return micro


@dataclass
class _Run:
    """What the steps of one run share: options, process context, the model (as given, wrapped for
    DDP/FSDP2, and that compiled for the training forward with ``compile``), optimizer and schedule,
    data, and what the run has produced so far."""

    options: TrainOptions
    ctx: D.DistContext
    model: nn.Module
    wrapped: nn.Module
    compiled: nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    micro: int
    amp_dtype: torch.dtype | None
    train_data: Dataset
    eval_data: Dataset | None
    tokenizer: PreTrainedTokenizerBase | None
    data_config: dict | None = None
    allow_data_change: bool = False
    result: TrainResult = field(default_factory=TrainResult)
    lineage: list[str] = field(default_factory=list)
    metrics: MetricsWriter | None = None

    @property
    def config(self) -> PretrainedConfig | None:
        return getattr(self.model, "config", None)

    def say(self, line: str) -> None:
        if self.ctx.is_main:
            print(line, flush=True)


def _start_run(
    model: nn.Module,
    train_data: Dataset,
    eval_data: Dataset | None,
    options: TrainOptions,
    ctx: D.DistContext,
) -> _Run:
    """Check batch and vocabulary, seed, place and wrap the model, and build the optimizer and the
    learning-rate schedule."""
    micro = micro_batch_size(options, ctx.world)
    check_vocab(model, train_data)
    config = getattr(model, "config", None)
    tokenizer = hf_tokenizer(train_data)
    if tokenizer is not None and config is not None and config.eos_token_id is None:
        config.eos_token_id = config.pad_token_id = tokenizer.eos_token_id  # generation stops there
    torch.manual_seed(options.seed)
    select_trainable(model, options.trainable)  # before wrapping and before the optimizer
    if options.activation_checkpointing:
        enable_activation_checkpointing(model)
    model.to(ctx.device)
    wrapped = D.wrap(model, ctx, options.parallel)
    compiled = torch.compile(wrapped, backend=options.compile_backend) if options.compile else None
    optimizer = build_optimizer(wrapped, options)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, options))
    use_bf16 = options.precision == "bf16" or (options.precision == "auto" and ctx.device.type == "cuda")
    return _Run(
        options=options,
        ctx=ctx,
        model=model,
        wrapped=wrapped,
        compiled=compiled,
        optimizer=optimizer,
        scheduler=scheduler,
        micro=micro,
        amp_dtype=torch.bfloat16 if use_bf16 else None,
        train_data=train_data,
        eval_data=eval_data,
        tokenizer=tokenizer,
    )


def _resume(run: _Run) -> int | None:
    """Load the newest checkpoint of ``out_dir`` into the run (refusing a changed model, or a changed
    data section unless ``allow_data_change``); returns its step, or None when that checkpoint is already
    at ``steps`` (``run.result`` then names it)."""
    path = latest_checkpoint(run.options.out_dir)
    config = run.config
    if config is not None and (changed := config_differences(config, path)):
        raise ValueError(
            f"the model config differs from the checkpoint's ({path / CONFIG_FILE}) in "
            f"{', '.join(changed)}; restore the model section or train into a new out_dir"
        )
    saved_data = read_run_info(path).get("data_config")
    if run.data_config is not None and saved_data is not None and not run.allow_data_change:
        if changed := section_differences(saved_data, run.data_config):
            raise ValueError(
                f"the data section differs from the checkpoint's ({path / RUN_FILE}) in "
                f"{', '.join(changed)}; restore it, or continue on the new data with allow_data_change "
                "(--allow-data-change)"
            )
    weights, state = read_checkpoint(path, getattr(config, "tie_word_embeddings", False))
    start = int(state["step"])
    if start >= run.options.steps:
        run.say(f"finished at step {start}, nothing to do ({path}; steps={run.options.steps})")
        run.result = TrainResult(start_step=start, checkpoint=str(path))
        return None
    run.say(f"resuming from step {start} ({path})")
    _restore(path, weights, state, run.wrapped, run.optimizer, run.scheduler, run.ctx)
    run.lineage = read_run_info(path)["lineage"]
    return start


def _save(run: _Run, step: int) -> None:
    """Checkpoint ``step`` (model, optimizer, schedule, RNG; written by the main process)."""
    model_state = D.model_state(run.wrapped)
    opt_state = D.optimizer_state(run.wrapped, run.optimizer)
    ctx = run.ctx
    if ctx.is_main:
        trainer_state = {
            "step": step,
            "optimizer": opt_state,
            "scheduler": run.scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(ctx.device) if ctx.device.type == "cuda" else None,
            "world_size": ctx.world,
        }
        saved = save_checkpoint(
            run.options.out_dir,
            step,
            model_state,
            run.config,
            trainer_state,
            run.options.keep_checkpoints,
            lineage=run.lineage,
            data=data_kind(run.train_data),
            data_config=run.data_config,
            model_class=type(run.model),
            tokenizer=run.tokenizer,
        )
        run.lineage = read_run_info(saved)["lineage"]
        run.result.checkpoint = str(saved)
    D.barrier(ctx)


def _evaluate(run: _Run, step: int) -> None:
    """Score the eval data (when there is some) and record it in the result and the metrics."""
    if run.eval_data is None:
        return
    scores = evaluate_lm(
        run.wrapped,
        run.eval_data,
        batch_size=run.micro,
        max_batches=run.options.eval_batches,
        device=run.ctx.device,
        autocast_dtype=run.amp_dtype,
    )
    record = {"step": step, **{f"eval_{k}": v for k, v in scores.items()}}
    run.result.evals.append(record)
    run.metrics.write(record)


def _optimizer_step(run: _Run, step: int) -> tuple[float, float, int]:
    """One optimizer step over the global batch of ``step``; returns (loss, gradient norm before
    clipping or NaN without clipping, tokens read by all processes)."""
    options, ctx = run.options, run.ctx
    batches = rank_micro_batches(
        run.train_data, step, options.batch_size, run.micro, ctx.rank, ctx.world, options.seed
    )
    loss = _accumulate_gradients(run.wrapped, batches, ctx, run.amp_dtype, forward=run.compiled)
    grad_norm = float("nan")
    if options.grad_clip > 0:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(run.wrapped.parameters(), options.grad_clip))
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss, grad_norm, sum(b["input_ids"].numel() for b in batches) * ctx.world


def _run_steps(run: _Run, start: int) -> None:
    """Steps ``start .. steps - 1`` with their logging, evaluations and checkpoints, then the final
    evaluation, checkpoint and loss plot."""
    options, result = run.options, run.result
    bar = None
    if options.progress and run.ctx.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=options.steps, initial=start, desc="train", dynamic_ncols=True, file=sys.stderr)
    run.wrapped.train()
    tokens_seen, started = 0, time.perf_counter()
    try:
        for step in range(start, options.steps):
            loss, grad_norm, tokens = _optimizer_step(run, step)
            tokens_seen += tokens
            result.losses.append(loss)
            tok_s = tokens_seen / max(time.perf_counter() - started, 1e-9)
            done = step + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}")
            if done % options.log_every == 0 or done == options.steps:
                lr = run.scheduler.get_last_lr()[0]
                record = {"loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_second": tok_s}
                run.metrics.write({"step": done, **record})
            if options.eval_every and done % options.eval_every == 0 and done != options.steps:
                _evaluate(run, done)
            if options.out_dir and options.save_every and done % options.save_every == 0:
                _save(run, done)
        result.train_seconds = time.perf_counter() - started
        result.tokens_per_second = tokens_seen / max(result.train_seconds, 1e-9)
        _evaluate(run, options.steps)
        if options.out_dir and not (options.save_every and options.steps % options.save_every == 0):
            _save(run, options.steps)
        if run.metrics.path is not None:
            write_loss_plot(run.metrics.path)
    finally:
        if bar is not None:
            bar.close()


def train(
    model: nn.Module,
    train_data: Dataset,
    options: TrainOptions,
    *,
    eval_data: Dataset | None = None,
    resume: bool = False,
    overwrite: bool = False,
    data_config: dict | None = None,
    allow_data_change: bool = False,
) -> TrainResult:
    """Train ``model`` (an :class:`~mcrnn.models.MCForCausalLM` or any module returning ``.logits``).

    With ``resume=True`` the newest complete checkpoint in ``options.out_dir`` is loaded (model,
    optimizer, scheduler, step, RNG) and the run continues so that its losses equal those of an
    uninterrupted run; a run already at ``options.steps`` or beyond does nothing; without a checkpoint
    it is an error. A fresh run into an ``out_dir`` that holds a run is refused unless
    ``overwrite=True``, which first deletes that run's outputs. ``data_config`` (the config's ``data:``
    section) is recorded in every checkpoint's ``run.json``; resuming with a different one is refused,
    naming the changed keys, unless ``allow_data_change``. The run holds ``out_dir``
    (:mod:`mcrnn.train.lock`). Returns a :class:`TrainResult`; checkpoints, metrics and ``loss.png`` go
    to ``out_dir``.
    """
    if (options.save_every or resume) and not options.out_dir:
        raise ValueError("out_dir is required to save or resume checkpoints")
    ctx = D.setup(options.device)
    with hold_out_dir(options.out_dir, ctx):
        check_out_dir(options.out_dir, resume, overwrite)
        run = _start_run(model, train_data, eval_data, options, ctx)
        run.data_config, run.allow_data_change = data_config, allow_data_change
        if overwrite and options.out_dir and ctx.is_main:
            remove_run_outputs(options.out_dir)
        D.barrier(ctx)
        start = _resume(run) if resume else 0
        if start is None:
            return run.result
        run.result.start_step = start
        run.metrics = MetricsWriter(options.out_dir, ctx.is_main, start)
        try:
            _run_steps(run, start)
        finally:
            run.metrics.close()
    return run.result


def _restore(path, weights, state, wrapped, optimizer, scheduler, ctx) -> None:  # noqa: ANN001
    """Load a checkpoint's weights, optimizer, scheduler and RNG states into the run."""
    try:
        D.load_model_state(wrapped, weights)
    except RuntimeError as err:
        detail = str(err).strip().splitlines()[-1].strip()  # one mismatch of torch's list
        raise ValueError(f"the weights in {path} do not fit the model: {detail}") from err
    D.load_optimizer_state(wrapped, optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng_cpu"])
    if ctx.device.type == "cuda" and state.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(state["rng_cuda"], ctx.device)


def _accumulate_gradients(
    wrapped: nn.Module,
    batches: list[dict[str, torch.Tensor]],
    ctx: D.DistContext,
    amp_dtype: torch.dtype | None,
    *,
    forward: nn.Module | None = None,
) -> float:
    """Backward of ``sum CE / tokens`` over this step's micro-batches (all processes' tokens count,
    so the gradient equals one big batch's); returns the step's mean loss over every process. The
    logits come from ``forward`` (``wrapped`` compiled) when given, else from ``wrapped``."""
    count = torch.tensor(
        float(sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)), device=ctx.device
    )
    count = D.all_reduce_sum(count, ctx).clamp_min(1.0)
    loss_sum = torch.zeros((), device=ctx.device)
    for i, batch in enumerate(batches):
        ids, labels = batch["input_ids"].to(ctx.device), batch["labels"].to(ctx.device)
        sync = i == len(batches) - 1 or not isinstance(wrapped, nn.parallel.DistributedDataParallel)
        with wrapped.no_sync() if not sync else nullcontext():
            with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = lm_logits(forward if forward is not None else wrapped, ids, batch.get("doc_start"))
            ce = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="sum")
            (ce * ctx.world / count).backward()
        loss_sum += ce.detach()
    return (D.all_reduce_sum(loss_sum, ctx) / count).item()
