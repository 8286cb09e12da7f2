"""The public op takes each family's inputs as one group (mcrnn.ops.memories); the old keywords still work
for one release, with a DeprecationWarning, and give the same outputs."""

from __future__ import annotations

import warnings

import pytest
import torch

from mcrnn.ops import memory_caching
from mcrnn.ops.deep import layer_shapes
from mcrnn.ops.memories import DLA, GLA, KDA, SWLA, DeltaNet, GatedDeltaNet, Linear, Titans, memory_inputs

B, T, H, D = 2, 12, 2, 4
OPTIONS = {"segment_size": 4, "aggregation": "grm", "chunk_size": 2}


def _qkvu() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    q, k, v, u = (torch.randn(B, T, H, D, generator=gen, dtype=torch.float64) for _ in range(4))
    return [q, torch.nn.functional.normalize(k, dim=-1), v, u]


def _gate(low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    return low + (high - low) * torch.rand(B, T, H, dtype=torch.float64)


def _cases() -> list[tuple[str, dict[str, object], object]]:
    """(memory, old keywords, the family dataclass holding the same tensors)."""
    torch.manual_seed(1)
    log_decay, prev_gate, cur_gate, beta = _gate(-0.5, 0.0), _gate(), _gate(), _gate()
    channel_decay = -0.5 * torch.rand(B, T, H, D, dtype=torch.float64)
    params = [0.3 * torch.randn(H, o, i, dtype=torch.float64) for o, i in layer_shapes(D, D, 2, 2)]
    eta, alpha, momentum = _gate(0.0, 0.1), _gate(0.5, 1.0), _gate()
    mask = torch.rand(B, T) > 0.2
    return [
        ("linear", {"log_decay": log_decay}, Linear(log_decay=log_decay)),
        ("swla", {"prev_gate": prev_gate, "cur_gate": cur_gate}, SWLA(prev_gate, cur_gate)),
        ("deltanet", {"beta": beta}, DeltaNet(beta=beta)),
        ("gated_deltanet", {"log_decay": log_decay, "beta": beta}, GatedDeltaNet(log_decay, beta)),
        ("gla", {"log_decay": channel_decay}, GLA(log_decay=channel_decay)),
        ("kda", {"log_decay": channel_decay, "beta": beta}, KDA(channel_decay, beta)),
        ("dla", {"params": params, "eta": eta, "alpha": alpha, "mask": mask}, DLA(params, eta, alpha, mask)),
        (
            "titans",
            {"params": params, "eta": eta, "alpha": alpha, "beta": momentum},
            Titans(params=params, eta=eta, alpha=alpha, momentum=momentum),
        ),
    ]


@pytest.mark.parametrize("case", range(8))
def test_grouped_inputs_equal_the_deprecated_keywords(case: int) -> None:
    memory, keywords, grouped = _cases()[case]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the grouped form warns about nothing
        new = memory_caching(*_qkvu(), memory=grouped, **OPTIONS)
    with pytest.warns(DeprecationWarning, match=rf"pass memory={type(grouped).__name__}\(\.\.\.\)"):
        old = memory_caching(*_qkvu(), memory=memory, **keywords, **OPTIONS)
    torch.testing.assert_close(new, old, rtol=0, atol=0)


def test_a_name_is_enough_for_a_family_without_inputs() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        by_name = memory_caching(*_qkvu(), memory="linear", **OPTIONS)
    torch.testing.assert_close(by_name, memory_caching(*_qkvu(), memory=Linear(), **OPTIONS), rtol=0, atol=0)


def test_grouped_decoding_continues_the_prefill() -> None:
    q, k, v, u = _qkvu()
    beta = _gate()
    full = memory_caching(q, k, v, u, memory=DeltaNet(beta=beta), **OPTIONS)
    prefill = [x[:, :5] for x in (q, k, v, u)]
    _, cache = memory_caching(*prefill, memory=DeltaNet(beta[:, :5]), output_cache=True, **OPTIONS)
    for t in range(5, T):
        step = [x[:, t : t + 1] for x in (q, k, v, u)]
        memory = DeltaNet(beta[:, t : t + 1])
        out, cache = memory_caching(*step, memory=memory, cache=cache, output_cache=True)
        torch.testing.assert_close(out[:, 0], full[:, t], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        ({"memory": "deltanet"}, ValueError, r"memory='deltanet' needs \['beta'\]: pass memory=DeltaNet"),
        ({"memory": "titans"}, ValueError, r"needs \['params', 'eta', 'alpha', 'momentum'\]"),
        ({"memory": Linear(), "log_decay": torch.zeros(B, T, H)}, ValueError, r"inside memory=Linear"),
        ({"memory": "linear", "gamma": 1.0}, TypeError, r"unexpected keyword arguments \['gamma'\]"),
        ({"memory": "linear", "cur_gate": torch.ones(B, T, H)}, ValueError, "memory='linear' takes"),
        ({"memory": 3}, TypeError, "memory must be a family name"),
        ({"memory": "gla2"}, ValueError, "memory must be one of"),
    ],
)
def test_bad_memory_arguments_name_what_is_wrong(call: dict, error: type, message: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(error, match=message):
            memory_caching(*_qkvu(), **call)


def test_memory_inputs_names_foreign_inputs() -> None:
    with pytest.raises(ValueError, match=r"memory='deltanet' takes \('beta',\), not \['log_decay'\]"):
        memory_inputs("deltanet", beta=_gate(), log_decay=_gate(-1.0, 0.0))
    built = memory_inputs("gated_deltanet", log_decay=_gate(-1.0, 0.0), beta=_gate())
    assert isinstance(built, GatedDeltaNet)


def test_docstring_examples_run() -> None:
    """The ``Examples`` block of :func:`memory_caching` is run as written."""
    import doctest

    from mcrnn.ops import api

    result = doctest.testmod(api, raise_on_error=False, verbose=False)
    assert result.attempted > 5 and result.failed == 0
