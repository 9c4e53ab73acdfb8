"""Benchmarks of pracset, each checked against a target; run from the repository root.

``python -m pipelines.benchmarks.NAME --help`` says what NAME measures, its
target and how to run it; ``--smoke`` runs it for a few steps on synthetic
data. Each ends with a line ``VERDICT PASS|FAIL|SKIP: ...`` (see ``common``).

- ``capture_equality``: training with the captured CUDA-graph step gives the eager run's metrics, masks and statistics (to a stated tolerance), with no host sync in a captured epoch.
- ``gpu_floor``: pracset's epoch (recorder on and off, static mask, RigL, GraNet; capture on and off) against the floor, a bare training step replayed as one CUDA graph.
- ``lightning_overhead``: a Lightning Trainer's epoch with pracset's callback (recorder, and RigL) against without it.
- ``loader``: one MNIST epoch fed by pracset's DeviceLoader vs bare tensors and a torch DataLoader.
- ``manifest``: writing, reading and applying an ImageNet-sized PrAC manifest.
- ``packed``: K models (a ticket's controls) trained as one packed job against one model alone.
- ``recorder``: the per-example recorder's cost per training epoch, and its host syncs.
- ``sparse``: the overhead of a static mask, RigL and GraNet over dense training.
- ``streaming``: the StreamingLoader (1, 2, all workers) against the in-memory loader on JPEG CIFAR-10 or any JPEG folder or tar, and how long a GPU waits for it.
- ``train``: the training loop's speed and its host syncs per step.
"""

NAMES = ("capture_equality", "gpu_floor", "lightning_overhead", "loader", "manifest", "packed", "recorder", "sparse",
         "streaming", "train")
