"""TODO."""

NAME = "post_training"


def section(results, plot_dir, page_dir):
    return []
