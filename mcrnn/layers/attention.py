"""Causal softmax attention with rotary position embeddings: the Transformer++ token mixer.

``y = W_o concat_h softmax(RoPE(q_h) RoPE(k_h)^T / sqrt(D) + causal mask) v_h`` with ``q, k, v = x W_{q,k,v}``
(or, with ``conv_size = K > 0``, ``q, k, v = silu(causal_conv_K(x W_{q,k,v}))``, the short convolution of the
MC layer: it hands every token its predecessors, the previous-token half of an induction head) and
PyTorch's ``scaled_dot_product_attention`` (flash / memory-efficient kernels where available). RoPE
(Su et al., 2021) rotates channel pairs ``(i, i + D/2)`` of ``q`` and ``k`` at absolute position ``p`` by
``p * theta^(-2i/D)``. The interface mirrors :class:`mcrnn.layers.MemoryCachingAttention`, so a model
can stack either: ``forward(x, attention_mask=None, cache=None, use_cache=False) -> (y, cache)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mcrnn.layers.checks import check_attention_mask, check_hidden_states
from mcrnn.layers.conv import ShortConvolution
from mcrnn.layers.packing import run_documents
from mcrnn.ops.cache import batch_indices


@dataclass
class AttentionCache:
    """Keys and values seen so far, ``[B, H, T_past, D]`` each (RoPE already applied to the keys), and the
    short convolution's last ``K-1`` inputs per projection (``[B, K-1, hidden]``; empty without one)."""

    keys: torch.Tensor
    values: torch.Tensor
    key_mask: torch.Tensor | None = None  # [B, T_past] bool, True = real token; None = all real
    conv: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def seq_len(self) -> int:
        return self.keys.shape[2]

    def reorder(self, indices: torch.Tensor) -> AttentionCache:
        """The cache of batch rows ``indices`` (beam search, batch selection)."""
        indices = batch_indices(indices).to(self.keys.device)
        mask = None if self.key_mask is None else self.key_mask.index_select(0, indices)
        conv = {name: state.index_select(0, indices) for name, state in self.conv.items()}
        return AttentionCache(
            self.keys.index_select(0, indices), self.values.index_select(0, indices), mask, conv
        )


def rotary(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Apply RoPE to ``x`` [B, H, T, D] at integer ``positions`` [T] (half-split channel pairing)."""
    dim = x.shape[-1]
    half = dim // 2
    freqs = theta ** (-torch.arange(half, device=x.device, dtype=torch.float32) * 2.0 / dim)
    angles = positions.to(torch.float32)[:, None] * freqs[None, :]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def check_attention_options(
    hidden_size: int, num_heads: int, rope_theta: float, conv_size: object = 0
) -> None:
    """Raise ``ValueError`` unless ``hidden_size / num_heads`` is an even head dim, ``rope_theta > 0`` and
    ``conv_size`` an int >= 0."""
    if hidden_size % num_heads != 0:
        raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
    if (hidden_size // num_heads) % 2 != 0:
        raise ValueError(f"head dim hidden_size/num_heads={hidden_size // num_heads} must be even for RoPE")
    if not rope_theta > 0:
        raise ValueError(f"rope_theta must be > 0, got {rope_theta}")
    if isinstance(conv_size, bool) or not isinstance(conv_size, int) or conv_size < 0:
        raise ValueError(f"conv_size must be an int >= 0 (0: no convolution), got {conv_size!r}")


class Attention(nn.Module):
    """Multi-head causal attention with RoPE and SDPA.

    Args:
        hidden_size: model width; must be divisible by ``num_heads`` and give an even head dim.
        num_heads: attention heads ``H``; head dim ``D = hidden_size / H``.
        rope_theta: RoPE base ``theta``.
        conv_size: kernel of a short causal convolution on q, k, v (0, the default: none).
        layer_idx: position in the stack (kept for symmetry with the MC layer).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        rope_theta: float = 10000.0,
        conv_size: int = 0,
        layer_idx: int | None = None,
    ) -> None:
        super().__init__()
        check_attention_options(hidden_size, num_heads, rope_theta, conv_size)
        self.head_dim = hidden_size // num_heads
        self.num_heads = num_heads
        self.rope_theta = rope_theta
        self.layer_idx = layer_idx
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.convs = nn.ModuleDict(
            {name: ShortConvolution(hidden_size, conv_size) for name in "qkv"} if conv_size > 0 else {}
        )

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        cache: AttentionCache | None = None,
        use_cache: bool = False,
        cu_seqlens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, AttentionCache | None]:
        """``x`` [B, T, hidden]; ``attention_mask`` [B, T] with 1 = real token (padded keys are ignored; with
        a convolution, padded positions enter it as zeros, which is exact for left padding);
        ``cu_seqlens`` [N + 1]: documents packed in ``x`` [1, T, hidden] attend only within themselves,
        with positions from 0 (training; no mask or cache).

        Returns ``y`` [B, T, hidden] and, with ``use_cache``, the cache extended by these ``T`` tokens.
        """
        check_hidden_states(x, self.q_proj.in_features, self.q_proj.weight)
        if cu_seqlens is not None:
            if attention_mask is not None or cache is not None or use_cache:
                raise ValueError("cu_seqlens (packed documents) takes no attention_mask, cache or use_cache")
            return run_documents(lambda docs, mask: self(docs, attention_mask=mask)[0], x, cu_seqlens), None
        batch, seq_len, _ = x.shape
        past = cache.seq_len if cache is not None else 0
        if attention_mask is not None:
            check_attention_mask(attention_mask, batch, seq_len, past)
        shape = (batch, seq_len, self.num_heads, self.head_dim)
        q, k, v, conv_state = self._project(x, attention_mask, cache)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        positions = torch.arange(past, past + seq_len, device=x.device)
        q, k = rotary(q, positions, self.rope_theta), rotary(k, positions, self.rope_theta)
        key_mask = None
        if attention_mask is not None:
            key_mask = attention_mask[:, -seq_len:].to(torch.bool)
        if cache is not None:
            if cache.key_mask is not None or key_mask is not None:
                ones = torch.ones(batch, past + seq_len, dtype=torch.bool, device=x.device)
                old = cache.key_mask if cache.key_mask is not None else ones[:, :past]
                new = key_mask if key_mask is not None else ones[:, past:]
                key_mask = torch.cat([old, new], dim=1)
            k = torch.cat([cache.keys, k], dim=2)
            v = torch.cat([cache.values, v], dim=2)
        if key_mask is None and past == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            total = past + seq_len
            allowed = torch.arange(total, device=x.device)[None, :] <= positions[:, None]  # [T, total]
            if key_mask is not None:
                allowed = allowed[None, None] & key_mask[:, None, None, :]
                # a fully padded query row attends to itself only, so SDPA never sees an all-masked row
                allowed = allowed | (torch.arange(total, device=x.device)[None, :] == positions[:, None])
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        y = self.o_proj(out.transpose(1, 2).reshape(batch, seq_len, -1))
        new_cache = AttentionCache(k, v, key_mask, conv_state) if use_cache else None
        return y, new_cache

    def _project(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None, cache: AttentionCache | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``q, k, v`` [B, T, hidden] (through the short convolution when there is one) and its new state."""
        projected = {"q": self.q_proj(x), "k": self.k_proj(x), "v": self.v_proj(x)}
        if not self.convs:
            return projected["q"], projected["k"], projected["v"], {}
        if attention_mask is not None:  # pads enter the convolution as zeros
            keep = attention_mask[:, -x.shape[1] :].unsqueeze(-1).to(x.dtype)
            projected = {name: value * keep for name, value in projected.items()}
        outputs, state = {}, {}
        for name, value in projected.items():
            outputs[name], state[name] = self.convs[name](value, None if cache is None else cache.conv[name])
        return outputs["q"], outputs["k"], outputs["v"], state
