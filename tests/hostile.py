"""Objects a stranger's file can hold: used by the tests that check pracset never runs them."""

from __future__ import annotations

import os


class RunsCode:
    """Pickles into a call of ``os.system`` that creates ``marker``: what a hostile data file or checkpoint holds."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
