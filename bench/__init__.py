"""Tongban benchmarks: ``python -m bench`` (or ``make bench``) runs them and prints a table.

Each figure is printed beside a baseline measured in the same run, because the machines
are noisy: compare ratios across runs, not absolute figures. See ``bench.foundation``.
"""
