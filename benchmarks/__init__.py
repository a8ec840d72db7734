"""Benchmarks: the runtime and the operator, side by side with what users would pick instead.

`make bench` runs :mod:`benchmarks.run_all`; results land in ``bench-results/`` and
:mod:`benchmarks.report` turns them into ``docs/benchmarks.md`` and ``docs/img/*.png``.
"""
