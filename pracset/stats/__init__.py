"""Per-example statistics (the recorder) and the pruning probe."""

from pracset.stats.probe import ProbeResult, predict, pruning_probe
from pracset.stats.recorder import BYTES_PER_EXAMPLE, ExampleRecorder, ExampleStatistics

__all__ = ["BYTES_PER_EXAMPLE", "ExampleRecorder", "ExampleStatistics", "ProbeResult", "predict", "pruning_probe"]
