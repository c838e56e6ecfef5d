"""Benchmarks (design section 8): ``make bench``, ``make bench-smoke``, ``make bench-scale``.

Not part of the installed package: run from a checkout (``python -m bench.run``).
"""
