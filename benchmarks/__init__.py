"""threadlock's benchmark harness: ``python -m benchmarks --help``.

Locks are wrapped in adapters (:mod:`benchmarks.adapter`), registered by the
``benchmarks/adapters_*.py`` modules; the scenarios S1-S4 live in :mod:`benchmarks.scenarios`
and the goals in :mod:`benchmarks.targets`. See ``docs/benchmarks.md``.
"""
