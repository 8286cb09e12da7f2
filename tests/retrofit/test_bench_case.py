"""The retrofit bench case times what it says: the host layer, and the same layer with MC on."""

from mcrnn.bench.cases import build
from mcrnn.bench.retrofit import retrofit_suite


def test_retrofit_suite_builds_both_layers(monkeypatch):
    import mcrnn.retrofit.families as families

    calls = []
    read = families.READS["gated_deltanet"]
    monkeypatch.setitem(families.READS, "gated_deltanet", lambda *a: (calls.append(a[5]), read(*a))[1])
    cases = retrofit_suite((64,), segment_size=16)
    assert [name for name, _ in cases] == ["retrofit_base", "retrofit_grm"]
    for name, case in cases:
        step, tokens = build(case)
        step()
        assert tokens == 64
        assert len(calls) == (name == "retrofit_grm")  # only the MC case reads through mcrnn's op
    assert calls[0].segment_size == 16 and calls[0].aggregation == "grm"
