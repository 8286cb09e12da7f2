"""Helpers below every layer of the package (they import nothing of mcrnn): argparse types of the
sub-commands (:mod:`mcrnn.utils.arguments`) and matplotlib plots (:mod:`mcrnn.utils.plots`)."""
