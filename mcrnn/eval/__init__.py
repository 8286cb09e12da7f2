"""Evaluation: MQAR, S-NIAH, perplexity and length extrapolation (``mcrnn eval``) and ``mcrnn demo``."""

from mcrnn.eval.harness import eval_extrapolation, eval_mqar, eval_niah, eval_perplexity, with_average_caching
from mcrnn.eval.report import format_table, plot_bars, plot_lines, write_json

__all__ = [
    "eval_extrapolation",
    "eval_mqar",
    "eval_niah",
    "eval_perplexity",
    "format_table",
    "plot_bars",
    "plot_lines",
    "with_average_caching",
    "write_json",
]
