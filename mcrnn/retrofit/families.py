"""The recurrent layers a retrofit recognises, and the one op call per family.

A host layer is recognised by the module-level function its ``forward`` calls for the recurrence
(the same name in every transformers family that copies the layer):

- ``gated_deltanet``: ``torch_chunk_gated_delta_rule`` / ``torch_recurrent_gated_delta_rule``
  (Qwen3.5, Qwen3.5-MoE, Qwen3-Next, OLMo-hybrid). The host's core, per value head::

      q, k = repeat_interleave(q, k) to the value heads (GVA);  q, k = l2norm(q), l2norm(k)
      q = q / sqrt(Dk);  S_t = exp(g_t) (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T;  o_t = S_t^T q_t

  i.e. mcrnn's ``gated_deltanet`` memory with ``log_decay = g``, ``beta = b`` on those q, k, v.
- ``mamba2``: ``mamba2_scan_forward(module, x, B, C, dt, cache)`` (Mamba2, Bamba, Falcon-H1,
  Nemotron-H, GraniteMoeHybrid, Zamba2). The SSD recurrence per head ``h``::

      dt = clamp(softplus(dt + dt_bias), time_step_limit);  A = -exp(A_log)
      S_t = exp(dt_t A) S_{t-1} + (dt_t B_t) x_t^T   [N x P];   y_t = S_t^T C_t + D x_t

  i.e. mcrnn's ``linear`` memory with ``q = C``, ``k = dt B`` (groups repeated to heads), ``v = x``,
  ``log_decay = dt A``; the ``D`` skip is added after the read (the gate and norm stay the host's).
- ``kda``: ``chunk_kimi_delta_attention`` / ``recurrent_kimi_delta_attention`` (Kimi Linear's KDA),
  the gated delta rule with a per-key-channel decay ``g`` [B, T, H, Dk]::

      S_t = (I - b_t k_t k_t^T) Diag(exp(g_t)) S_{t-1} + b_t k_t v_t^T

  i.e. mcrnn's ``kda`` memory (``log_decay = g``, ``beta = b``), q and k prepared as for the gated delta
  rule (no GVA in these hosts).

One function calls :func:`mcrnn.ops.memory_caching` (:func:`mc_read`, with the family's input
dataclass from :mod:`mcrnn.ops.memories`), so a change of the op's keywords is made in one place.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from mcrnn.ops import MCSpec, MemoryCache, memory_caching
from mcrnn.ops.memories import KDA as KDAInputs
from mcrnn.ops.memories import GatedDeltaNet, Linear, MemoryInputs


@dataclass(frozen=True)
class Family:
    """A kind of host layer: its name, the mcrnn memory it maps onto, the module-level function its
    forward calls for the recurrence, and fused kernels the forward may try first (made to decline)."""

    name: str
    memory: str
    cores: tuple[str, ...]
    fused: tuple[str, ...] = ()


GATED_DELTANET = Family(
    "gated_deltanet", "gated_deltanet", ("torch_chunk_gated_delta_rule", "torch_recurrent_gated_delta_rule")
)
MAMBA2 = Family("mamba2", "linear", ("mamba2_scan_forward",), ("mamba2_split_conv1d_scan_combined",))
KDA = Family("kda", "kda", ("chunk_kimi_delta_attention", "recurrent_kimi_delta_attention"))
FAMILIES = (GATED_DELTANET, MAMBA2, KDA)


def host_forward(module: nn.Module) -> Callable | None:
    """The undecorated ``forward`` function of ``module``'s class (None for a module without one)."""
    forward = getattr(type(module), "forward", None)
    return inspect.unwrap(forward) if inspect.isfunction(forward) else None


def family_of(module: nn.Module) -> Family | None:
    """The family whose core function ``module``'s forward calls, or None."""
    forward = host_forward(module)
    if forward is None:
        return None
    names = set(forward.__code__.co_names)
    return next((family for family in FAMILIES if names & set(family.cores)), None)


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """The hosts run their cores in float32; float64 stays float64 (for the exactness tests)."""
    return x if x.dtype == torch.float64 else x.float()


def _l2norm(x: torch.Tensor) -> torch.Tensor:
    """The hosts' ``l2norm``: ``x / sqrt(sum x^2 + 1e-6)`` over the last dim."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + 1e-6)


def delta_inputs(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    l2norm: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The gated-DeltaNet host core's preprocessing: GVA expansion, float32, L2 norm, ``1/sqrt(Dk)``.

    Args: query, key [B, T, Hk, Dk]; value [B, T, Hv, Dv] (Hv a multiple of Hk); g, beta [B, T, Hv].
    Returns: q, k [B, T, Hv, Dk] (q normalised and scaled: the q the host reads with, and the query
    router's ``u``), v [B, T, Hv, Dv], gates ``{"log_decay": g, "beta": beta}``.
    """
    groups = value.shape[2] // key.shape[2]
    if groups > 1:
        query = query.repeat_interleave(groups, dim=2)
        key = key.repeat_interleave(groups, dim=2)
    q, k, v, g, beta = (at_least_fp32(x) for x in (query, key, value, g, beta))
    if l2norm:
        q, k = _l2norm(q), _l2norm(k)
    q = q * q.shape[-1] ** -0.5
    return q, k, v, {"log_decay": g, "beta": beta}


def mc_read(
    family: type[MemoryInputs],
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None,
    gates: dict[str, torch.Tensor],
    spec: MCSpec,
    cache: MemoryCache | None,
    output_cache: bool,
) -> tuple[torch.Tensor, MemoryCache | None]:
    """MC over a host's recurrence as mcrnn's ``family`` (its ``gates`` are the family's inputs, in
    mcrnn's layout): ``(o [B, T, H, Dv], cache or None)``. The host's own gates may leave the op's
    documented ranges (OLMo-hybrid's beta in [0, 2]), so the op's input checks are skipped."""
    out = memory_caching(
        q,
        k,
        v,
        u,
        spec=spec,
        memory=family(**gates),
        cache=cache,
        output_cache=output_cache,
        check_inputs=False,
    )
    return out if output_cache else (out, None)


def ssd_inputs(
    module: nn.Module, hidden_states: torch.Tensor, B: torch.Tensor, C: torch.Tensor, dt: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The Mamba2 SSD inputs as a linear memory's.

    Args: hidden_states [B, T, H*P]; B, C [B, T, G*N]; dt [B, T, H] (before ``dt_bias`` and softplus).
    Returns: q = C, k = dt B [B, T, H, N] (groups repeated to heads), v = x [B, T, H, P],
    gates ``{"log_decay": dt A}`` [B, T, H], all at least float32.
    """
    batch, seq_len, _ = hidden_states.shape
    heads, groups, state = module.num_heads, module.n_groups, module.ssm_state_size
    dt = torch.nn.functional.softplus(at_least_fp32(dt) + module.dt_bias)
    dt = torch.clamp(dt, min=module.time_step_limit[0], max=module.time_step_limit[1])
    x = at_least_fp32(hidden_states).view(batch, seq_len, heads, module.head_dim)
    B, C = (
        at_least_fp32(t).view(batch, seq_len, groups, state).repeat_interleave(heads // groups, dim=2)
        for t in (B, C)
    )
    log_decay = dt * -torch.exp(module.A_log.to(dt.dtype))
    return C, B * dt[..., None], x, {"log_decay": log_decay}


#: the mcrnn memory family each host recurrence is read as (gated delta rule, Mamba2 SSD: scalar-decay
#: linear memory without the D skip, Kimi Linear's KDA: per-key-channel decay)
READS = {
    GATED_DELTANET.name: partial(mc_read, GatedDeltaNet),
    MAMBA2.name: partial(mc_read, Linear),
    KDA.name: partial(mc_read, KDAInputs),
}
