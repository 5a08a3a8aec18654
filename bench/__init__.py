"""Kiota's benchmarks: `python -m bench` (see bench/__main__.py and bench/RESULTS.md).

Performance is measured, never asserted: each figure is reported with a baseline measured
in the same run, on the same machine, so that the ratio survives a noisy machine.
"""
