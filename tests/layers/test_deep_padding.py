"""Right padding leaves a deep memory's whole decoding state unchanged (dla, titans), per row."""

from __future__ import annotations

import pytest
import torch

from mcrnn.layers import MemoryCachingAttention

LENGTHS = [14, 9]  # real tokens per row of a batch padded to 14


@pytest.mark.parametrize("memory", ["dla", "titans"])
@pytest.mark.parametrize("segment_size", [None, 8])
def test_right_padded_prefill_leaves_the_deep_cache_of_each_row(
    memory: str, segment_size: int | None
) -> None:
    """Weights, momentum, cached states, key sums and segment contexts after a
    padded prefill equal those of the row prefilled alone, at 1e-10 in float64. Both rows end in the
    last segment (segments of 8) and row 1's padding crosses a chunk boundary (chunks of 4); before
    the op took the mask, the padding moved the retention and the momentum (~1e-2 here)."""
    torch.manual_seed(0)
    layer = MemoryCachingAttention(
        16, 2, memory=memory, segment_size=segment_size, chunk_size=4, memory_expansion=2
    ).double()
    x = torch.randn(2, max(LENGTHS), 16, dtype=torch.float64)
    mask = (torch.arange(max(LENGTHS)) < torch.tensor(LENGTHS)[:, None]).long()
    _, padded = layer(x, attention_mask=mask, use_cache=True)
    for row, n in enumerate(LENGTHS):
        _, alone = layer(x[row : row + 1, :n], use_cache=True)
        found, expected = _state(padded.op), _state(alone.op)
        assert found.keys() == expected.keys()
        for name, ref in expected.items():
            torch.testing.assert_close(
                found[name][row], ref[0], rtol=1e-10, atol=1e-10, msg=lambda m, k=name: f"{k}: {m}"
            )


def _state(cache: object) -> dict[str, torch.Tensor]:
    """The tensors of a deep-memory cache by name, batch first."""
    state = {f"weights[{l}]": w for l, w in enumerate(cache.weights)}
    state |= {f"momentum[{l}]": m for l, m in enumerate(cache.momentum or [])}
    state |= {f"cached[{i}][{l}]": w for i, ws in enumerate(cache.cached) for l, w in enumerate(ws)}
    state |= {f"context_sums[{i}]": s for i, s in enumerate(cache.context_sums)}
    return state | {"key_sum": cache.key_sum}
