"""``ordering``: whether the paper's qualitative claims reproduced here, from the other experiments.

Nothing is trained: each claim is a list of comparisons of the ``recall``, ``lm`` and ``post-training``
results at their current settings under the same ``--out``, each printed with its mean ± std over seeds
and its outcome: it *holds* or is *contradicted* when the means differ by more than the noise margin
(the sum of the two standard deviations, and at least half a unit of the last printed digit), else it is
*within noise*; ``>=`` and ``>`` read alike, so equal means are within noise. A claim reads ``yes`` /
``no`` / ``within noise`` when every comparison that ran agrees, ``mixed`` with the counts otherwise,
and ``not run`` when its results are missing (a missing model drops only its own comparisons, listed as
not run; an experiment with no run at its current settings is not run, whatever older settings ran).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mcrnn.eval.experiments import experiment_module
from mcrnn.eval.experiments.lm import MODEL_NAMES as LM_MODELS
from mcrnn.eval.experiments.runner import MODELS, by_settings, load_results
from mcrnn.eval.experiments.stats import by_group, cell, metric_stats

NAME = "ordering"
#: recall chains (best first) for "GRM >= Soup >= SSC > Log-Linear++ > base"; soup equals grm on a
#: matrix memory (DESIGN.md §3), so the linear chain has no soup
RECALL_CHAINS = (("grm", "ssc", "log", "base"), ("dla-grm", "dla-soup", "dla-ssc", "dla-log", "dla-base"))
#: (MC model, its base) pairs of equal state
MC_PAIRS = (
    ("grm", "base"),
    ("ssc", "base"),
    ("dla-grm", "dla-base"),
    ("dla-soup", "dla-base"),
    ("dla-ssc", "dla-base"),
)


class Claim:
    """Comparisons of one claim, each ``(text, outcome)``: ``holds``, ``contradicted``, ``within noise``
    or ``not run``.

    With means ``m`` and sample stds ``s`` over seeds and ``d`` the difference in the claimed direction
    (``m_left - m_right`` for ``>`` and ``>=``, ``m_right - m_left`` for ``<``), the noise margin is
    ``max(s_left + s_right, 0.5 * 10**-digits)``: a claim holds when ``d > margin``, is contradicted when
    ``d < -margin`` and is within noise otherwise (equal means too, whatever the sign).
    """

    def __init__(self) -> None:
        self.checks: list[tuple[str, str]] = []

    def compare(self, left, right, label_left: str, label_right: str, sign: str, digits: int = 3) -> None:
        """Record ``left <sign> right`` (``sign`` in ``>``, ``>=``, ``<``; each side ``(mean, std, n)``
        or None when it did not run; when neither ran, e.g. a width outside both models' plans, nothing
        is recorded). ``digits``: the decimals printed; half a unit of the last one is the smallest margin."""
        if left is None and right is None:
            return
        if left is None or right is None:
            self.checks.append((f"{label_left} {sign} {label_right}: not run", "not run"))
            return
        d = right[0] - left[0] if sign == "<" else left[0] - right[0]
        margin = max(left[1] + right[1], 0.5 * 10.0**-digits)
        if d < -margin:
            outcome = "contradicted"
        elif d > margin:
            outcome = "holds"
        else:
            outcome = "within noise"
        text = f"{label_left} {cell(left, digits)} {sign} {label_right} {cell(right, digits)}: {outcome}"
        self.checks.append((text, outcome))

    def verdict(self) -> str:
        """``yes`` / ``no`` / ``within noise`` when every comparison that ran agrees, else the counts;
        ``not run`` when none ran."""
        ran = [outcome for _, outcome in self.checks if outcome != "not run"]
        if not ran:
            return "not run"
        missing = f" on what ran ({len(ran)}/{len(self.checks)})" if len(ran) < len(self.checks) else ""
        words = {"holds": "yes", "contradicted": "no", "within noise": "within noise"}
        if len(set(ran)) == 1:
            return words[ran[0]] + missing
        counts = ", ".join(f"{ran.count(o)} {o}" for o in words if o in ran)
        return f"mixed ({counts}){missing}"


def _stats(groups: dict, key, metric: Callable[[dict], float]):
    return metric_stats(groups[key], metric) if key in groups else None


def main_settings(out: Path, experiment: str, current: object = None) -> list[dict]:
    """The results of ``experiment`` at ``current`` (a Settings dataclass; default: its defaults, a None
    field matching any run); none when no run has them, whatever ran at other settings."""
    module = experiment_module(experiment)
    runs, _ = by_settings(load_results(out, experiment), current or module.Settings())
    return runs


def claims(out: Path, current: dict[str, object] | None = None) -> list[tuple[str, str, Claim]]:
    """``(claim, evidence, Claim)`` for each of the paper's claims, from the results under ``out`` at the
    ``current`` settings of each experiment (default: its defaults)."""
    current = current or {}
    recall = by_group(
        main_settings(out, "recall", current.get("recall")), lambda r: (r["model"], r["metrics"]["width"])
    )
    widths = sorted({w for _, w in recall})
    lm = by_group(main_settings(out, "lm", current.get("lm")), lambda r: r["model"])
    post = by_group(main_settings(out, "post-training", current.get("post-training")), lambda r: r["model"])

    def acc(model: str, width: int):
        return _stats(recall, (model, width), lambda r: r["metrics"]["accuracy"])

    def ppl(model: str):
        return _stats(lm, model, lambda r: r["metrics"]["val_perplexity"])

    mc = Claim()
    for width in widths:
        for model, base in MC_PAIRS:
            mc.compare(acc(model, width), acc(base, width), f"{model} (w{width})", base, ">")
    for model, base in MC_PAIRS:
        if model in LM_MODELS and base in LM_MODELS:
            mc.compare(ppl(model), ppl(base), f"{model} ppl", f"{base} ppl", "<", digits=2)
    order = Claim()
    for width in widths:
        for chain in RECALL_CHAINS:
            for upper, below in zip(chain[:-1], chain[1:], strict=True):
                sign = ">=" if below in ("dla-soup", "dla-ssc", "ssc") else ">"
                order.compare(acc(upper, width), acc(below, width), f"{upper} (w{width})", below, sign)
    long_len = next((rs[0]["settings"]["long_len"] for rs in lm.values()), None)
    cheap = Claim()
    speed = lambda m: _stats(lm, m, lambda r: r["metrics"]["long_forward_tokens_per_second"])  # noqa: E731
    for other in ("grm", "log"):
        cheap.compare(speed("ssc"), speed(other), "ssc tok/s", f"{other} tok/s", ">", digits=0)
    extrapolation = Claim()
    for model in ("base", "dla-base"):
        runs = post.get(model)
        lengths = sorted(int(n) for n in runs[0]["metrics"]["perplexity"]["model"])[1:] if runs else [None]
        for n in lengths:

            def score(variant: str, n=n, runs=runs):
                return (
                    metric_stats(runs, lambda r: r["metrics"]["perplexity"][variant][str(n)])
                    if runs
                    else None
                )

            extrapolation.compare(
                score("average"), score("model"), f"{model} + average @{n}", "no caching", "<", digits=2
            )
    return [
        ("MC > base RNN at equal state", "recall accuracy at each width; lm perplexity", mc),
        ("GRM >= Soup >= SSC > Log-Linear++ > base on recall", "recall accuracy at each width", order),
        ("SSC cheapest of the MC variants at long T", f"lm: no-grad forward tok/s at T={long_len}", cheap),
        (
            "post-training caching helps extrapolation",
            "post-training: perplexity beyond the training length",
            extrapolation,
        ),
    ]


def section(out: Path, current: dict[str, object] | None = None) -> list[str]:
    """The claims table: claim, evidence, reproduced?, and every comparison with its numbers (the
    results at the ``current`` settings of each experiment, see :func:`claims`)."""
    lines = ["| claim | evidence | reproduced here | comparisons (mean ± std (seeds)) |", "|---|---|---|---|"]
    for claim, evidence, result in claims(out, current):
        details = "<br>".join(text for text, _ in result.checks) or "not run"
        lines.append(f"| {claim} | {evidence} | {result.verdict()} | {details} |")
    names = ", ".join(f"`{m}` = {label}" for m, (label, _) in MODELS.items())
    return [*lines, "", f"Model names: {names}.\n"]
