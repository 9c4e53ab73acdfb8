"""pracset: find lottery tickets on less data with Pruning-Aware Critical (PrAC) sets.

The user-facing names are importable from here::

    import pracset
    result = pracset.build_manifest(pracset.DataConfig("digits"), "mlp", "digits.parquet")
    tickets = pracset.find_tickets("prac-imp", pracset.DataConfig("digits"), "mlp", "runs/prac")
    subset = pracset.load_subset("digits.parquet", hf_dataset)
"""

__version__ = "0.1.0"

import importlib  # noqa: E402  (after __version__, which pracset.build reads while this package loads)

# Names are resolved on first use (PEP 562): `import pracset` stays fast, and torch, pyarrow and
# datasets load only when a name that needs them is touched.
_EXPORTS = {
    "build_manifest": "pracset.build", "build_identity": "pracset.build", "BuildConfig": "pracset.build",
    "BuildResult": "pracset.build",
    "find_tickets": "pracset.tickets", "IMPConfig": "pracset.tickets", "TICKET_METHODS": "pracset.tickets",
    "TicketSettings": "pracset.tickets",
    "load_subset": "pracset.manifest", "read_manifest": "pracset.manifest", "write_manifest": "pracset.manifest",
    "Manifest": "pracset.manifest", "ManifestError": "pracset.manifest",
    "ExampleRecorder": "pracset.stats", "pruning_probe": "pracset.stats",
    "select": "pracset.selection", "SelectionConfig": "pracset.selection", "SelectionInputs": "pracset.selection",
    "Mask": "pracset.sparse", "RigLConfig": "pracset.sparse", "GraNetConfig": "pracset.sparse",
    "SPARSE_METHODS": "pracset.sparse", "SparseStepper": "pracset.sparse", "RigL": "pracset.sparse",
    "GraNet": "pracset.sparse", "StaticMask": "pracset.sparse", "EarlyBirdConfig": "pracset.sparse.early_bird",
    "DataConfig": "pracset.data", "load_dataset": "pracset.data", "from_torch": "pracset.data.torch_data",
    "TrainConfig": "pracset.train", "Trainer": "pracset.train", "Callback": "pracset.train",
    "train_dense": "pracset.train.run",
    "build_model": "pracset.models",
    "to_torch_prune": "pracset.interop", "from_torch_prune": "pracset.interop", "load_ticket": "pracset.interop",
    "save_hf_dataset": "pracset.interop",
    "load_pipeline": "pracset.pipeline", "run_pipeline": "pracset.pipeline",
    "PracsetError": "pracset.errors", "ConfigError": "pracset.errors", "DataError": "pracset.errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pracset' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
