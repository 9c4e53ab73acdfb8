"""PrAC manifests: one Parquet row per training example, with the kept set marked.

:func:`write_manifest` / :func:`read_manifest` write and read validated
manifests (schema in :data:`COLUMNS`, documented in ``manifests/README.md``);
:func:`load_subset` picks the kept examples out of a ``datasets.Dataset``.

Only :func:`load_subset` is imported eagerly (and it imports nothing heavy);
the other names load ``pracset.manifest.schema`` (pyarrow) on first use, so
``import pracset`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pracset.manifest.subset import load_subset

if TYPE_CHECKING:
    from pracset.manifest.columns import COLUMNS, REASONS, REQUIRED_METADATA, SCHEMA, SCHEMA_VERSION, ManifestError
    from pracset.manifest.schema import Manifest, build_table, read_manifest, write_manifest

_FROM_SCHEMA = (
    "COLUMNS", "REASONS", "REQUIRED_METADATA", "SCHEMA", "SCHEMA_VERSION", "Manifest", "ManifestError",
    "build_table", "read_manifest", "write_manifest",
)

__all__ = [*_FROM_SCHEMA, "load_subset"]


def __getattr__(name: str) -> Any:  # PEP 562: pyarrow is imported on first use only
    if name in _FROM_SCHEMA:
        from pracset.manifest import schema  # schema imports columns: every name is reachable from it

        value = getattr(schema, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
