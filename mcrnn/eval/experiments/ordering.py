"""``ordering``: whether the paper's qualitative claims reproduced here, from the other experiments.

Nothing is trained: each claim is a list of comparisons of the ``recall``, ``niah``, ``lm`` and
``post-training`` results at their current settings under the same ``--out``, each printed with its
mean ± std over seeds and its outcome: it *holds* or is *contradicted* (the reverse holds) when the
means differ by more than the noise margin (the sum of the two standard deviations, and at least half a
unit of the last printed digit), else it is *within noise*; ``>=`` and ``>`` read alike, so equal means
are within noise. A side with fewer than :data:`MIN_SEEDS` seeds reads *not enough runs* (one seed has
no spread to measure noise by). A claim reads ``yes`` / ``no`` / ``within noise`` when every comparison
that ran agrees, ``mixed`` with the counts otherwise, and ``not run`` when nothing could be compared (a
missing cell drops only its own comparisons, listed; an experiment with no run at its current settings
is not run, whatever older settings ran). Recall comparisons use only the widths each model's family
runs at (:func:`mcrnn.eval.experiments.recall.family_widths`).

Below the table, :func:`routing_lines` states what the runs say about the report that segment-level
routing does not help MQAR while it helps single-needle retrieval, generated from the comparisons of
SSC (routed reads of the cache) with its base on ``recall`` and on ``niah``. A ``niah`` cell (task and
length) where no model of the group scored above 0, the Transformer++ included, is no evidence either
way (:data:`FLOOR`): equal zeros say that the budget taught nothing, not that routing does not help.
The statement also lists, outside its conclusion, what ``retrofit`` says: routed reads added to a frozen
host trained without caching, against the unrouted average and against no caching
(:func:`frozen_host_routing`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mcrnn.eval.experiments import experiment_module
from mcrnn.eval.experiments.lm import MODEL_NAMES as LM_MODELS
from mcrnn.eval.experiments.runner import MODELS, by_settings, load_results
from mcrnn.eval.experiments.stats import by_group, cell, metric_stats

NAME = "ordering"
#: seeds a side of a comparison needs before its outcome is read
MIN_SEEDS = 3
#: recall chains (best first) for "GRM >= Soup >= SSC > Log-Linear++ > base"; soup equals grm on a
#: matrix memory (DESIGN.md §3), so the linear chain has no soup; gated DeltaNet runs grm and ssc only
RECALL_CHAINS = (
    ("grm", "ssc", "log", "base"),
    ("gdn-grm", "gdn-ssc", "gdn-base"),
    ("dla-grm", "dla-soup", "dla-ssc", "dla-log", "dla-base"),
)
#: the chain links the paper writes ``>=`` (the model below it in the chain)
AT_LEAST = ("dla-soup", "dla-ssc", "ssc", "gdn-ssc")
#: (MC model, its base) pairs of equal state
MC_PAIRS = (
    ("grm", "base"),
    ("ssc", "base"),
    ("gdn-grm", "gdn-base"),
    ("gdn-ssc", "gdn-base"),
    ("dla-grm", "dla-base"),
    ("dla-soup", "dla-base"),
    ("dla-ssc", "dla-base"),
)
#: (routed model, its base) pairs of the routing statement: SSC reads the top-k cached segments
ROUTING_PAIRS = (("ssc", "base"), ("gdn-ssc", "gdn-base"), ("dla-ssc", "dla-base"))
#: a comparison on a task no model of its group learned (every mean 0, the Transformer++'s too)
FLOOR = "no model learned it"
#: outcomes that are no evidence either way
NO_EVIDENCE = ("not run", "not enough runs", FLOOR)


class Claim:
    """Comparisons of one claim, each ``(text, outcome)``: ``holds``, ``contradicted``, ``within noise``,
    ``not enough runs`` or ``not run``.

    With means ``m`` and sample stds ``s`` over seeds and ``d`` the difference in the claimed direction
    (``m_left - m_right`` for ``>`` and ``>=``, ``m_right - m_left`` for ``<``), the noise margin is
    ``max(s_left + s_right, 0.5 * 10**-digits)``: a claim holds when ``d > margin``, is contradicted when
    ``d < -margin`` (the reverse holds beyond the margin) and is within noise otherwise (equal means too,
    whatever the sign); a side with fewer than :data:`MIN_SEEDS` seeds is not enough runs.
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
        if min(left[2], right[2]) < MIN_SEEDS:
            outcome = "not enough runs"
        elif d < -margin:
            outcome = "contradicted"
        elif d > margin:
            outcome = "holds"
        else:
            outcome = "within noise"
        text = f"{label_left} {cell(left, digits)} {sign} {label_right} {cell(right, digits)}: {outcome}"
        self.checks.append((text, outcome))

    def ran(self) -> list[str]:
        """The outcomes that are evidence (neither not run nor not enough runs)."""
        return [outcome for _, outcome in self.checks if outcome not in NO_EVIDENCE]

    def verdict(self) -> str:
        """``yes`` / ``no`` / ``within noise`` when every comparison that ran agrees, else the counts;
        ``not run`` when none ran."""
        ran = self.ran()
        if not ran:
            return "not enough runs" if any(o == "not enough runs" for _, o in self.checks) else "not run"
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
    recall = RecallCells(out, current.get("recall"))
    lm = by_group(main_settings(out, "lm", current.get("lm")), lambda r: r["model"])
    post = by_group(main_settings(out, "post-training", current.get("post-training")), lambda r: r["model"])

    def ppl(model: str):
        return _stats(lm, model, lambda r: r["metrics"]["val_perplexity"])

    mc = Claim()
    for model, base in MC_PAIRS:
        recall.compare(mc, model, base, ">")
    for model, base in MC_PAIRS:
        if model in LM_MODELS and base in LM_MODELS:
            mc.compare(ppl(model), ppl(base), f"{model} ppl", f"{base} ppl", "<", digits=2)
    bigger = Claim()
    for model in ("grm", "ssc"):
        recall.compare_with_bigger_base(bigger, model)
    order = Claim()
    for chain in RECALL_CHAINS:
        for upper, below in zip(chain[:-1], chain[1:], strict=True):
            recall.compare(order, upper, below, ">=" if below in AT_LEAST else ">")
    long_len = next((rs[0]["settings"]["long_len"] for rs in lm.values()), None)
    cheap = Claim()
    speed = lambda m: _stats(lm, m, lambda r: r["metrics"]["long_forward_tokens_per_second"])  # noqa: E731
    for other in ("grm", "log"):
        cheap.compare(speed("ssc"), speed(other), "ssc tok/s", f"{other} tok/s", ">", digits=0)
    return [
        ("MC > base RNN at equal state", "recall accuracy at each width; lm perplexity", mc),
        (
            "MC > a base RNN with a bigger state",
            "recall: MC at width w against the linear base at the width whose state is what grm reads",
            bigger,
        ),
        ("GRM >= Soup >= SSC > Log-Linear++ > base on recall", "recall accuracy at each width", order),
        ("SSC cheapest of the MC variants at long T", f"lm: no-grad forward tok/s at T={long_len}", cheap),
        (
            "post-training caching helps extrapolation",
            "post-training: perplexity beyond the training length",
            extrapolation_claim(post),
        ),
    ]


class RecallCells:
    """The ``recall`` results at ``current`` (default: its defaults), per ``(model, width)``."""

    def __init__(self, out: Path, current: object = None) -> None:
        module = experiment_module("recall")
        self.settings = current or module.Settings()
        self.widths = lambda model: module.family_widths(model, self.settings)
        self.matched = lambda width: module.state_matched_width(width, self.settings)
        results = main_settings(out, "recall", self.settings)
        self.cells = by_group(results, lambda r: (r["model"], r["metrics"]["width"]))

    def accuracy(self, model: str, width: int):
        return _stats(self.cells, (model, width), lambda r: r["metrics"]["accuracy"])

    def compare(self, claim: Claim, model: str, other: str, sign: str) -> None:
        """``model <sign> other`` at every width both run at (a cell of neither is listed as not run)."""
        for width in sorted(set(self.widths(model)) & set(self.widths(other))):
            self.record(claim, (model, width), (other, width), other, sign)

    def record(
        self, claim: Claim, left: tuple[str, int], right: tuple[str, int], label: str, sign: str
    ) -> None:
        """``left <sign> right`` (each ``(model, width)``), listed as not run when neither cell ran."""
        text = f"{left[0]} (w{left[1]})"
        if self.accuracy(*left) is None and self.accuracy(*right) is None:
            claim.checks.append((f"{text} {sign} {label}: not run", "not run"))
            return
        claim.compare(self.accuracy(*left), self.accuracy(*right), text, label, sign)

    def compare_with_bigger_base(self, claim: Claim, model: str) -> None:
        """``model`` at each width ``w`` > the linear base at the state-matched width of ``w``."""
        for width in self.widths(model):
            matched = self.matched(width)
            self.record(claim, (model, width), ("base", matched), f"base (w{matched})", ">")


def extrapolation_claim(post: dict) -> Claim:
    """Post-training average caching against no caching, at every length beyond the training one."""
    claim = Claim()
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

            label = f"{model} + average @{n}"
            claim.compare(score("average"), score("model"), label, "no caching", "<", digits=2)
    return claim


def routing_claims(out: Path, current: dict[str, object] | None = None) -> tuple[Claim, Claim]:
    """SSC against its base (equal state; SSC's router picks the cached segments each token reads) on
    MQAR (``recall``, every family at its widths) and on single-needle retrieval (``niah``: S-NIAH-1/2/3
    at each length); each comparison ``ssc > base``."""
    current = current or {}
    mqar = Claim()
    recall = RecallCells(out, current.get("recall"))
    for model, base in ROUTING_PAIRS:
        recall.compare(mqar, model, base, ">")
    needle = Claim()
    niah = by_group(main_settings(out, "niah", current.get("niah")), lambda r: r["model"])
    tasks = experiment_module("niah").TASKS
    runs = niah.get("ssc") or niah.get("base") or []
    lengths = sorted({int(n) for r in runs for n in r["metrics"]["accuracy"][tasks[0]]}) or [None]
    for task in tasks:
        for n in lengths:

            def score(model: str, task=task, n=n):
                metric = lambda r: r["metrics"]["accuracy"][task][str(n)]  # noqa: E731
                return _stats(niah, model, metric) if n is not None else None

            label = f"ssc ({task.replace('niah_', 'S-NIAH-')}" + (f" @{n})" if n else ")")
            scores = [score(model) for model in niah] if n is not None else []
            if scores and max(found[0] for found in scores) <= 0.0:
                needle.checks.append((f"{label} > base: every model scored 0, the Transformer++ too", FLOOR))
            else:
                needle.compare(score("ssc"), score("base"), label, "base", ">", digits=2)
    if not needle.checks:
        needle.checks.append(("ssc > base on S-NIAH: not run", "not run"))
    return mqar, needle


def routing_reading(claim: Claim) -> str | None:
    """What a routing comparison list says: ``helps`` (every comparison holds), ``does not help`` (none
    holds), or ``mixed (k of n hold)``; None when a comparison is missing or has too few seeds."""
    if not claim.checks or any(outcome in NO_EVIDENCE for _, outcome in claim.checks):
        return None
    ran = claim.ran()
    holds, against = ran.count("holds"), ran.count("contradicted")
    if holds == len(ran):
        return "helps"
    if holds == 0:
        return "does not help" + (f" (it hurts in {against} of {len(ran)})" if against else "")
    return f"mixed ({holds} of {len(ran)} comparisons hold)"


def _no_evidence(claim: Claim) -> str:
    """Why a routing comparison list is no evidence: its missing comparisons, or that no model learned
    the task."""
    outcomes = [outcome for _, outcome in claim.checks if outcome in NO_EVIDENCE]
    if outcomes and all(outcome == FLOOR for outcome in outcomes):
        return f"no model learned the task at these settings ({len(outcomes)} of {len(claim.checks)} cells)"
    return f"not enough runs ({len(outcomes)} of {len(claim.checks)} missing)"


def frozen_host_routing(out: Path, current: object = None) -> str | None:
    """The ``retrofit`` evidence on routing, one line: on a host trained without caching and frozen, the
    routed read (``ssc`` with the host's query as router) against the unrouted ``average`` and against
    no caching, at the longest length, per task (passkey = single needle, then MQAR); None when it did
    not run at ``current``."""
    runs = by_group(main_settings(out, "retrofit", current), lambda r: r["model"])
    parts = []
    for task, name in (("passkey", "single-needle passkey"), ("mqar", "MQAR")):
        if task not in runs:
            continue
        n = str(max(int(length) for length in runs[task][0]["metrics"]["accuracy"]["none"]))

        def score(read: str, n=n, task=task):
            return _stats(runs, task, lambda r: r["metrics"]["accuracy"][read][n])

        claim = Claim()
        claim.compare(score("ssc+query"), score("average"), f"ssc+query @{n}", "average", ">")
        claim.compare(score("ssc+query"), score("none"), f"ssc+query @{n}", "no caching", ">")
        parts.append(f"{name}: " + "; ".join(text for text, _ in claim.checks))
    if not parts:
        return None
    return (
        "- routed reads added to a frozen host trained without caching (`retrofit`, the longest length; "
        "not part of the conclusion below, which is about models trained with routing): "
        + "; ".join(parts)
        + "."
    )


def routing_lines(out: Path, current: dict[str, object] | None = None) -> list[str]:
    """The routing statement, its two halves as these runs read them, and the conclusion (generated)."""
    mqar, needle = routing_claims(out, current)
    lines = [
        "**Routing.** Two independent groups report that segment-level routing does not help multi-query "
        "recall (MQAR) while it helps single-needle retrieval. Here routing is SSC (each token reads the "
        "top-2 cached segments its router picks) against its base of equal state, by the rule above:\n",
    ]
    readings = []
    for task, claim in (("MQAR (`recall`)", mqar), ("single-needle retrieval (`niah`)", needle)):
        reading = routing_reading(claim)
        readings.append(reading)
        said = f"routing {reading}" if reading else f"no evidence yet: {_no_evidence(claim)}"
        lines.append(f"- {task}: {said}. " + "; ".join(text for text, _ in claim.checks) + ".")
    frozen = frozen_host_routing(out, (current or {}).get("retrofit"))
    if frozen:
        lines.append(frozen)
    if None in readings:
        pairs = zip((mqar, needle), readings, strict=True)
        reasons = "; ".join(_no_evidence(claim) for claim, reading in pairs if not reading)
        lines.append(f"\nThese runs cannot judge the statement yet: {reasons}.\n")
        return lines
    agrees = (readings[0].startswith("does not help"), readings[1] == "helps")
    verdict = {
        (True, True): "agree with both halves of the statement",
        (True, False): "agree that routing does not help MQAR, but not that it helps single-needle retrieval",
        (False, True): "agree that routing helps single-needle retrieval, but not that it does not help MQAR",
        (False, False): "disagree with both halves of the statement",
    }[agrees]
    return [*lines, f"\nThese runs {verdict}.\n"]


def section(out: Path, current: dict[str, object] | None = None) -> list[str]:
    """The claims table: claim, evidence, reproduced?, and every comparison with its numbers (the
    results at the ``current`` settings of each experiment, see :func:`claims`)."""
    lines = ["| claim | evidence | reproduced here | comparisons (mean ± std (seeds)) |", "|---|---|---|---|"]
    for claim, evidence, result in claims(out, current):
        details = "<br>".join(text for text, _ in result.checks) or "not run"
        lines.append(f"| {claim} | {evidence} | {result.verdict()} | {details} |")
    names = ", ".join(f"`{m}` = {label}" for m, (label, _) in MODELS.items())
    return [*lines, "", *routing_lines(out, current), f"Model names: {names}.\n"]
