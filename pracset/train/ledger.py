"""The iteration ledger, re-exported: it lives in :mod:`pracset.ledger`, below every part that counts work."""

from pracset.ledger import KINDS, IterationLedger, StageCost

__all__ = ["KINDS", "IterationLedger", "StageCost"]
