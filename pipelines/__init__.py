"""Experiment pipelines (the TOML files here, run by ``pracset run``), their committed results
(``results/``) and the benchmarks (``benchmarks/``).

A package only so that the benchmarks run as modules from the repository root
(``python -m pipelines.benchmarks.NAME``); it is not installed with pracset.
"""
