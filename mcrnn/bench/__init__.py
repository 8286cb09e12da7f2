"""Throughput benchmarks (``mcrnn bench``)."""
