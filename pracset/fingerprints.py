"""The fingerprint of a training split: its content hashes in id order and its class names.

Kept apart from the data sources (which need torch) so that reading a manifest can recompute it cheaply.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np


def fingerprint(hashes: np.ndarray, class_names: tuple[str, ...]) -> str:
    """A fingerprint of a split: its content hashes in id order and the class names."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update("\x1f".join(class_names).encode())
    digest.update(struct.pack("<q", len(hashes)))
    digest.update("".join(hashes.tolist()).encode())
    return digest.hexdigest()
