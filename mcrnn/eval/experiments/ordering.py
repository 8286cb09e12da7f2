"""TODO."""

NAME = "ordering"


def section(out):
    return []
