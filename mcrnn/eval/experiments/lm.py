"""TODO."""

NAME = "lm"


def section(results, plot_dir, page_dir):
    return []
