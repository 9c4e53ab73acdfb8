"""pracset: find lottery tickets on less data with Pruning-Aware Critical (PrAC) sets."""

__version__ = "0.1.0"

from pracset.manifest import load_subset  # noqa: E402  (lazy: loads datasets/pyarrow on first use)

__all__ = ["__version__", "load_subset"]
