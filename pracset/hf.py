"""A manifest's subset as a Hugging Face ``datasets`` folder, with a dataset card, and (online, on request) on the Hub.

:func:`save_hf_dataset` writes the selected rows with their ``example_id``, ``score`` and ``reason``;
:func:`dataset_card` describes how they were chosen; :func:`push_to_hub` uploads the folder. ``datasets``
is imported only inside these functions (an optional dependency for everything else). Also importable
from :mod:`pracset.interop`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from pracset.errors import ConfigError
from pracset.manifest import load_subset
from pracset.manifest.schema import Manifest, read_manifest

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)


def _reason(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), for a one-line error."""
    return str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__


_SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                    (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"))


def _file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _cell(value: Any) -> str:
    """A setting as a Markdown table cell: plain for numbers and words, JSON for lists and tables."""
    text = "none" if value is None else value if isinstance(value, str) else json.dumps(value, default=str)
    return text.replace("|", "\\|")


def _class_name(data: Mapping, label: int) -> str:
    names = data.get("class_names")
    return _cell(names[label]) if isinstance(names, list) and 0 <= label < len(names) else "-"


def dataset_card(manifest: "Manifest", *, source_license: str | None = None, id_column: str | None = None) -> str:
    """A Hugging Face dataset card (``README.md``) for ``manifest``'s subset: YAML front matter, then how it was chosen.

    ``source_license`` is the source data's license text, if known (the front
    matter then says ``other`` and the prose quotes it; else ``unknown``).
    """
    import yaml  # a dependency of datasets, which a card is written for

    data, selection, provenance = manifest.dataset, manifest.selection, manifest.provenance
    rule = selection.get("rule")
    front = {"license": "other" if source_license else "unknown", "task_categories": ["image-classification"],
             "size_categories": [next((label for limit, label in _SIZE_CATEGORIES if manifest.num_selected < limit),
                                      "n>100M")],
             "pretty_name": f"{data['name']} subset selected by pracset ({rule})",
             "tags": ["pracset", "data-subset", "lottery-ticket"]}
    # the rule's settings (a manifest's selection.params; older manifests kept them beside the rule)
    params = selection.get("params") if isinstance(selection.get("params"), Mapping) else {
        k: v for k, v in selection.items() if k not in ("rule", "selected", "total", "reasons")}
    version = provenance.get("pracset_version") or (provenance.get("versions") or {}).get("pracset")
    epochs = provenance.get("epochs_run", provenance.get("epochs"))
    digest = _file_digest(Path(manifest.path))
    show = lambda value: "not recorded" if value is None else f"`{value}`"  # noqa: E731
    lines = [
        f"# {data['name']}: {manifest.num_selected} of {manifest.size} training examples selected by pracset",
        "",
        f"This is a subset of the training split of the data set `{data['name']}`, chosen by "
        f"pracset with the selection rule `{rule}`: the examples a network needs to find "
        "a lottery ticket (sparse, trainable subnetwork) on less data. It was written from a pracset manifest, "
        "which records, for every training example, whether it was kept and why.",
        "",
        "## How the subset was selected",
        "",
        f"- selection rule: `{rule}` (its settings below)",
        f"- kept: {manifest.num_selected} of {manifest.size} training examples "
        f"({100 * manifest.fraction_selected:.2f}%)",
        "- kept per reason: " + ", ".join(f"{reason} {count}" for reason, count in manifest.reason_counts().items()),
        f"- architecture the statistics were recorded on: {show(provenance.get('arch'))}, "
        f"seed {show(provenance.get('seed'))}, epochs {show(epochs)}",
        f"- pracset version: {show(version)}",
        f"- data set fingerprint (of its class names and example content hashes): {show(data['fingerprint'])}",
        f"- manifest: `{Path(manifest.path).name}`" + (f", sha256 `{digest}`" if digest else ""),
        "",
        "Rows are in `example_id` order (the example's position in pracset's canonical training split"
        + (f": {data['id_order']}" if data.get("id_order") else "") + ")"
        + (f"; the column `{id_column}` holds it." if id_column else "."),
        "",
        "## Selection settings",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {key} | {_cell(value)} |" for key, value in params.items()),
        "",
        "## Kept per class",
        "",
        "| label | class | kept | of |",
        "|---|---|---|---|",
        *(f"| {label} | {_class_name(data, label)} | {c['selected']} | {c['total']} |"
          for label, c in manifest.per_class_counts().items()),
        "",
        "## License and loading",
        "",
        (f"The examples keep the license of the source data set: {source_license}." if source_license else
         "The license of the source data set applies; it was not recorded with the data.")
        + " Load the folder with `datasets.load_from_disk(PATH)` (or `datasets.load_dataset(REPO_ID)` once pushed).",
        "",
    ]
    return f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n" + "\n".join(lines)


def _refuse_nonempty(target: Path) -> None:
    if target.is_symlink() or (target.exists() and not (target.is_dir() and not any(target.iterdir()))):
        raise ConfigError(f"{target} exists and is not an empty directory; choose another directory")


def save_hf_dataset(manifest: "str | os.PathLike | Manifest", dataset: "datasets.Dataset",
                    directory: str | os.PathLike, *, card: bool = True, match: str = "auto",
                    image_column: str | None = None, label_column: str | None = None,
                    id_column: str | None = "example_id", score_column: str | None = "score",
                    reason_column: str | None = "reason") -> Path:
    """Write ``manifest``'s subset of ``dataset`` as a Hugging Face dataset folder; returns the folder.

    The subset is :func:`pracset.load_subset` (``match``, ``image_column`` and
    ``label_column`` are passed on): exactly the selected examples, in
    example_id order. It is written with ``Dataset.save_to_disk`` (read it
    with ``datasets.load_from_disk``), with a ``README.md`` dataset card
    (:func:`dataset_card`) unless ``card=False``. Three columns of the manifest
    travel with the rows: each row's ``example_id``, its selection ``score``
    and the ``reason`` it was kept, under the names ``id_column``,
    ``score_column`` and ``reason_column`` (``None`` leaves one out; a name the
    dataset already has is refused in one line). ``directory`` must not exist or
    be empty (else a one-line :class:`ConfigError`). Everything is written into
    a temporary sibling that is renamed into place, so a failure leaves no
    half-written folder.
    """
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest)
    target = Path(directory)
    _refuse_nonempty(target)
    subset = load_subset(manifest, dataset, match=match, image_column=image_column, label_column=label_column)
    selected = manifest.column("selected")
    added = {(id_column, "id_column"): manifest.selected_ids.tolist(),
             (score_column, "score_column"): manifest.column("score")[selected].astype(float).tolist(),
             (reason_column, "reason_column"): [str(r) for r in manifest.column("reason")[selected]]}
    added = {key: values for key, values in added.items() if key[0] is not None}
    names = [name for name, _ in added]
    for name, parameter in added:
        if names.count(name) > 1:
            raise ConfigError(f"two of id_column, score_column and reason_column are {name!r}; give each its own")
        if name in subset.column_names:
            raise ConfigError(f"the dataset already has a column {name!r}; choose another {parameter} "
                              "(or None to leave it out)")
    if added:
        subset = subset.flatten_indices()
        for (name, _), values in added.items():
            subset = subset.add_column(name, values)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from None
    try:
        subset.save_to_disk(str(staging))
        if card:
            text = dataset_card(manifest, source_license=getattr(dataset.info, "license", None) or None,
                                id_column=id_column)
            (staging / "README.md").write_text(text)
        _refuse_nonempty(target)  # again: something may have appeared while the subset was written
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would keep the folder from other users
        os.replace(staging, target)  # onto an absent or empty directory: atomic
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from None
        raise
    log.info("wrote %d of %d examples (manifest %s) to %s", len(subset), len(dataset), manifest.path, target)
    return target


def push_to_hub(directory: str | os.PathLike, repo_id: str, *, card: bool = True, private: bool = True,
                token: str | None = None) -> None:
    """Upload a folder :func:`save_hf_dataset` wrote to the Hugging Face Hub as dataset ``repo_id`` (needs internet).

    Nothing is uploaded unless this is called. The rows go up with
    ``Dataset.push_to_hub`` (a ``private`` repository by default); with
    ``card`` the folder's ``README.md`` then replaces the card it wrote,
    keeping that card's YAML keys (the data files it lists) that ours lacks.
    A failure (offline, no token, no rights) is a one-line :class:`ConfigError`.
    """
    import datasets
    import yaml

    folder = Path(directory)
    try:
        subset = datasets.load_from_disk(str(folder))
    except (OSError, ValueError) as exc:  # FileNotFoundError, or not a save_to_disk folder
        raise ConfigError(f"{folder} is not a saved dataset folder: {_reason(exc)}") from None
    readme = folder / "README.md"
    try:
        subset.push_to_hub(repo_id, private=private, token=token)
        if card and readme.is_file():
            from huggingface_hub import DatasetCard

            ours = DatasetCard(readme.read_text())
            merged = {**DatasetCard.load(repo_id, token=token).data.to_dict(), **ours.data.to_dict()}
            merged_card = DatasetCard(f"---\n{yaml.safe_dump(merged, sort_keys=False)}---\n{ours.text}")
            merged_card.push_to_hub(repo_id, token=token)
    except Exception as exc:  # network, authentication and hub errors come in many types
        raise ConfigError(f"could not push {folder} to the Hugging Face Hub as {repo_id}: {_reason(exc)}") from None
    log.info("pushed %s to the Hugging Face Hub as %s", folder, repo_id)


__all__ = ["dataset_card", "push_to_hub", "save_hf_dataset"]
