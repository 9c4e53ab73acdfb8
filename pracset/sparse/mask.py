"""The mask type, re-exported: it lives in :mod:`pracset.mask`, below every part that uses masks."""

from pracset.mask import MASK_FORMAT, MASK_VERSION, PRUNABLE_CHOICES, Mask, check_prunable, prunable_names

__all__ = ["MASK_FORMAT", "MASK_VERSION", "PRUNABLE_CHOICES", "Mask", "check_prunable", "prunable_names"]
