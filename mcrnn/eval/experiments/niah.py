"""TODO."""

NAME = "niah"


def section(results, plot_dir, page_dir):
    return []
