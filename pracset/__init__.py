"""pracset: find lottery tickets on less data with Pruning-Aware Critical (PrAC) sets."""

__version__ = "0.1.0"
