"""``MCConfig`` keywords that the layer and the op spell otherwise (issue 23.7)."""

import pytest

from mcrnn.models import MCConfig


@pytest.mark.parametrize("extra", [{"aggregation": "ssc", "segment_size": 8}, {}])
def test_top_k_points_to_ssc_top_k(extra):
    """``MCConfig(top_k=2)`` used to say "needs top_k, got None" under ``ssc`` (and silently kept ``top_k``
    as an unused extra otherwise): ``top_k`` is ``MemoryCachingAttention``'s and ``memory_caching``'s
    name, renamed ``ssc_top_k`` in the config so that it never collides with ``generate``'s ``top_k``."""
    with pytest.raises(ValueError, match=r"^top_k is not an MCConfig field; use ssc_top_k=2$"):
        MCConfig(vocab_size=11, hidden_size=16, num_heads=2, top_k=2, **extra)
