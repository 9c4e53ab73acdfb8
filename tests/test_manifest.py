"""Tests of ``pracset.manifest``: schema, validated writer and reader, Manifest, load_subset.

Manifests are built from synthetic columns (``make_columns``); the
``load_subset`` tests build small ``datasets.Dataset`` objects from the digits
training split, whose content hashes are real.
"""

from __future__ import annotations

import json
import logging
import math
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pracset.errors import ConfigError, PracsetError
from pracset.manifest import (
    COLUMNS, REASONS, SCHEMA_VERSION, Manifest, ManifestError, load_subset, read_manifest, write_manifest,
)
from pracset.manifest.subset import _match_hashes

N = 40


def make_columns(n: int = N, *, seed: int = 0, hashes=None, labels=None, selected=None) -> dict[str, np.ndarray]:
    """Valid manifest columns for ``n`` examples (ids 0..n-1 in order)."""
    rng = np.random.default_rng(seed)
    if hashes is None:
        hashes = np.array([f"{x:016x}" for x in rng.integers(0, 2**63, n)])
    if labels is None:
        labels = rng.integers(0, 3, n)
    if selected is None:
        selected = np.arange(n) % 3 == 0
    presentations = np.full(n, 5)
    times_correct = rng.integers(0, 6, n)
    margin = rng.normal(size=n)
    margin[1] = np.nan  # never presented
    score = rng.random(n)
    score[0] = np.inf
    reason = np.where(selected, np.array(REASONS * (n // len(REASONS) + 1))[:n], "")
    return {
        "example_id": np.arange(n),
        "content_hash": np.asarray(hashes),
        "label": np.asarray(labels),
        "forgetting_events": rng.integers(0, 4, n),
        "presentations": presentations,
        "times_correct": times_correct,
        "first_learned_epoch": np.where(times_correct > 0, rng.integers(0, 5, n), -1),
        "never_learned": times_correct == 0,
        "last_correct": rng.random(n) < 0.5,
        "last_loss": rng.random(n),
        "margin": margin,
        "cep_disagreements": rng.integers(0, 3, n),
        "score": score,
        "selected": np.asarray(selected),
        "reason": reason,
    }


def make_metadata(n: int = N, *, name: str = "synthetic", fingerprint: str = "f" * 32) -> dict:
    return {
        "dataset": {"name": name, "split": "train", "size": n, "fingerprint": fingerprint},
        "selection": {"rule": "cet", "fraction": 0.3, "params": {"k": 2}},
        "provenance": {"arch": "mlp", "seed": 0, "epochs": 3, "versions": {"pracset": "0.1.0"}},
    }


def write_raw(path, columns: dict, meta: dict | None) -> None:
    """Write a Parquet file with pyarrow alone, bypassing every check of write_manifest."""
    table = pa.table({k: pa.array(v) for k, v in columns.items()})
    if meta is not None:
        table = table.replace_schema_metadata({b"pracset": json.dumps(meta).encode()})
    pq.write_table(table, path)


def raw_meta(n: int = N, **changes) -> dict:
    return {"schema_version": SCHEMA_VERSION, **make_metadata(n), **changes}


# --------------------------------------------------------------------------- writing and reading
def test_round_trip_keeps_columns_types_metadata_and_extras(tmp_path):
    columns = make_columns()
    columns["extra_note"] = np.arange(N) * 2.5
    meta = make_metadata()
    path = write_manifest(tmp_path / "sub" / "m.parquet", columns, meta)
    assert path == tmp_path / "sub" / "m.parquet" and path.is_file()

    m = read_manifest(path)
    assert isinstance(m, Manifest)
    assert m.metadata == {"schema_version": SCHEMA_VERSION, **meta}
    assert m.table.column_names == [*COLUMNS, "extra_note"]
    for name, kind in COLUMNS.items():
        assert m.table.schema.field(name).type == kind, name
    for name, values in columns.items():
        got = m.column(name)
        if name in ("last_loss", "margin"):
            np.testing.assert_array_equal(got, np.asarray(values, dtype=np.float32))  # NaN == NaN here
        else:
            np.testing.assert_array_equal(got, values)
    assert m.column("score")[0] == math.inf and np.isnan(m.column("margin")[1])
    hashes = m.column("content_hash")  # strings come back as Python str objects (exact, NULs included)
    assert hashes.dtype == object and all(type(h) is str for h in hashes)


def test_writer_sorts_rows_by_example_id_and_reader_sorts_unsorted_files(tmp_path):
    columns = make_columns()
    perm = np.random.default_rng(1).permutation(N)
    shuffled = {k: v[perm] for k, v in columns.items()}
    m = read_manifest(write_manifest(tmp_path / "m.parquet", shuffled, make_metadata()))
    np.testing.assert_array_equal(m.column("example_id"), np.arange(N))
    np.testing.assert_array_equal(m.column("content_hash"), columns["content_hash"])

    write_raw(tmp_path / "raw.parquet", shuffled, raw_meta())
    np.testing.assert_array_equal(read_manifest(tmp_path / "raw.parquet").column("label"), columns["label"])


def test_plain_pyarrow_and_pandas_read_it(tmp_path):
    path = write_manifest(tmp_path / "m.parquet", make_columns(), make_metadata())
    table = pq.read_table(path)
    assert table.num_rows == N
    assert [(f.name, f.type) for f in table.schema] == list(COLUMNS.items())
    meta = json.loads(table.schema.metadata[b"pracset"])
    assert meta["schema_version"] == SCHEMA_VERSION and meta["dataset"]["size"] == N
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression in ("ZSTD", "SNAPPY")
    frame = table.to_pandas()
    kept = frame.loc[frame["selected"], "example_id"].to_numpy()
    np.testing.assert_array_equal(kept, np.flatnonzero(make_columns()["selected"]))


def test_manifest_properties_and_summary(tmp_path):
    labels = np.array([0, 0, 1, 1, 1, 2] * 2)
    selected = np.array([True, False, True, True, False, False] * 2)
    columns = make_columns(12, labels=labels, selected=selected)
    columns["reason"] = np.where(selected, np.array(["cet", "", "cep", "both", "", ""] * 2), "")
    m = read_manifest(write_manifest(tmp_path / "m.parquet", columns, make_metadata(12)))
    assert m.size == 12 and m.num_selected == 6 and m.fraction_selected == 0.5
    assert m.selected_ids.dtype == np.int64
    np.testing.assert_array_equal(m.selected_ids, [0, 2, 3, 6, 8, 9])
    assert m.per_class_counts() == {0: {"total": 4, "selected": 2}, 1: {"total": 6, "selected": 4},
                                    2: {"total": 2, "selected": 0}}
    assert m.reason_counts() == {"both": 2, "cep": 2, "cet": 2}
    assert m.dataset["name"] == "synthetic" and m.selection["rule"] == "cet" and m.provenance["arch"] == "mlp"
    summary = json.loads(json.dumps(m.summary()))
    assert summary["selected"] == 6 and summary["size"] == 12 and summary["fraction"] == 0.5
    assert summary["per_class"]["1"] == {"total": 6, "selected": 4}
    assert summary["reasons"]["cet"] == 2 and summary["path"] == str(m.path)
    with pytest.raises(ManifestError, match="no column 'nope'"):
        m.column("nope")


def test_to_hf_carries_rows_columns_and_metadata(tmp_path):
    columns = make_columns()
    columns["extra_note"] = np.arange(N)
    m = read_manifest(write_manifest(tmp_path / "m.parquet", columns, make_metadata()))
    ds = m.to_hf()
    assert ds.num_rows == N
    assert ds.column_names == [*COLUMNS, "extra_note"]
    assert json.loads(ds.info.description) == m.metadata
    assert ds[3]["example_id"] == 3 and ds[3]["content_hash"] == columns["content_hash"][3]


def test_import_is_light():
    code = ("import sys, pracset.manifest; from pracset.manifest import load_subset; "
            "print(sorted(m for m in ('pyarrow', 'datasets', 'torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------- atomic writes
def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = write_manifest(tmp_path / "m.parquet", make_columns(seed=1), make_metadata())
    before = path.read_bytes()

    def broken(table, where, **kwargs):
        where.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        write_manifest(path, make_columns(seed=2), make_metadata())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.parquet"]  # temporary file removed
    monkeypatch.undo()
    np.testing.assert_array_equal(read_manifest(path).column("content_hash"), make_columns(seed=1)["content_hash"])


# --------------------------------------------------------------------------- reader errors
def test_manifest_error_is_a_pracset_error():
    assert issubclass(ManifestError, PracsetError)


def test_missing_empty_and_directory(tmp_path):
    with pytest.raises(ManifestError, match=r"manifest .*nope\.parquet does not exist"):
        read_manifest(tmp_path / "nope.parquet")
    (tmp_path / "empty.parquet").write_bytes(b"")
    with pytest.raises(ManifestError, match=r"is empty \(0 bytes\)"):
        read_manifest(tmp_path / "empty.parquet")
    with pytest.raises(ManifestError, match="is a directory"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_file(tmp_path, keep):
    path = write_manifest(tmp_path / "m.parquet", make_columns(), make_metadata())
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ManifestError, match="is truncated"):
        read_manifest(path)


def test_corrupt_footer(tmp_path):
    path = write_manifest(tmp_path / "m.parquet", make_columns(), make_metadata())
    data = bytearray(path.read_bytes())
    data[-40:-8] = b"\xff" * 32  # keep the magic, garble the footer
    path.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="is corrupt or truncated"):
        read_manifest(path)


def test_not_a_parquet_file(tmp_path):
    path = tmp_path / "m.parquet"
    path.write_text("example_id,selected\n0,true\n")
    with pytest.raises(ManifestError, match="is not a Parquet file"):
        read_manifest(path)


def test_plain_parquet_without_pracset_metadata(tmp_path):
    path = tmp_path / "plain.parquet"
    write_raw(path, make_columns(), None)
    with pytest.raises(ManifestError, match="is not a pracset manifest"):
        read_manifest(path)


def test_unreadable_metadata(tmp_path):
    path = tmp_path / "m.parquet"
    table = pa.table(make_columns()).replace_schema_metadata({b"pracset": b"{not json"})
    pq.write_table(table, path)
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(path)


def test_newer_schema_version(tmp_path):
    path = tmp_path / "m.parquet"
    write_raw(path, make_columns(), raw_meta(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(ManifestError, match=rf"written by a newer pracset: schema version {SCHEMA_VERSION + 1}, "
                                            rf"this one reads up to {SCHEMA_VERSION}"):
        read_manifest(path)


def test_fingerprint_and_name_mismatch(tmp_path):
    path = write_manifest(tmp_path / "m.parquet", make_columns(), make_metadata(fingerprint="a" * 32))
    assert read_manifest(path, fingerprint="a" * 32, dataset_name="synthetic").size == N
    with pytest.raises(ManifestError, match=r"was built for data set synthetic with fingerprint aaaaaaaaaaaa\.\.\., "
                                            r"not this one \(bbbbbbbbbbbb\.\.\.\)"):
        read_manifest(path, fingerprint="b" * 32)
    with pytest.raises(ManifestError, match=r"built for data set synthetic .*not this one \(cifar10\)"):
        read_manifest(path, dataset_name="cifar10")


def test_metadata_without_required_keys(tmp_path):
    meta = raw_meta()
    del meta["dataset"]["fingerprint"]
    write_raw(tmp_path / "a.parquet", make_columns(), meta)
    with pytest.raises(ManifestError, match="lacks dataset.fingerprint"):
        read_manifest(tmp_path / "a.parquet")
    meta = raw_meta()
    del meta["provenance"]
    write_raw(tmp_path / "b.parquet", make_columns(), meta)
    with pytest.raises(ManifestError, match="lacks 'provenance'"):
        read_manifest(tmp_path / "b.parquet")


def _bad_file(tmp_path, change) -> str:
    """Write a file whose columns ``change`` spoiled; return the reader's error message."""
    columns, meta = make_columns(), raw_meta()
    change(columns, meta)
    write_raw(tmp_path / "bad.parquet", columns, meta)
    with pytest.raises(ManifestError) as info:
        read_manifest(tmp_path / "bad.parquet")
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "bad.parquet") in message
    return message


def _set(name, index, value):
    def change(columns, meta):
        columns[name] = columns[name].astype(object) if isinstance(value, str) else columns[name].copy()
        columns[name][index] = value
    return change


def _drop(name):
    return lambda columns, meta: columns.pop(name)


def _replace(name, values):
    return lambda columns, meta: columns.__setitem__(name, values)


def _chain(*changes):
    def change(columns, meta):
        for c in changes:
            c(columns, meta)
    return change


@pytest.mark.parametrize("change, fragment", [
    (_set("example_id", [5, 9], 3), r"2 duplicate example_id value\(s\) \(first: 3\)"),
    (_set("example_id", 7, N + 5), rf"1 example_id value\(s\) outside 0\.\.{N - 1} .*first: {N + 5}"),
    (_set("example_id", 7, -1), r"outside 0\.\..*first: -1"),
    (lambda c, m: m["dataset"].__setitem__("size", N + 2), rf"holds {N} rows but dataset.size is {N + 2}"),
    (_drop("forgetting_events"), "missing required column forgetting_events"),
    (_replace("label", np.full(N, 1.5)), "column label has type double, expected int64, and cannot be cast"),
    (_replace("score", [[1.0]] * N), r"column score has type list<.*double>, expected double, and cannot be cast"),
    (_replace("label", pa.array([None] + [1] * (N - 1), pa.int64())), r"column label holds 1 null value"),
    (_set("reason", 0, "lucky"), r"reason 'lucky' at example_id 0 is not one of cet, cep"),
    (_set("reason", 0, ""), "example_id 0 is selected but has no reason"),
    (_set("reason", 1, "cet"), "example_id 1 is not selected but has reason 'cet'"),
    (_chain(_replace("selected", np.zeros(N, bool)), _replace("reason", np.full(N, ""))), "no rows are selected"),
    (_set("content_hash", 4, "XYZ"), "content_hash of example_id 4 is not 16 lowercase hex characters: 'XYZ'"),
    (_set("forgetting_events", 2, -3), "column forgetting_events is negative at example_id 2"),
    (_set("first_learned_epoch", 2, -2), "first_learned_epoch is below -1 at example_id 2"),
], ids=["duplicate-ids", "id-too-big", "id-negative", "size-mismatch", "missing-column", "float-label",
        "list-score", "null-label", "unknown-reason", "selected-no-reason", "reason-not-selected",
        "none-selected", "bad-hash", "negative-count", "epoch-below-minus-one"])
def test_invalid_contents_are_named(tmp_path, change, fragment):
    message = _bad_file(tmp_path, change)
    assert re.search(fragment, message), message


def test_castable_types_are_accepted(tmp_path):
    columns = make_columns()
    columns["example_id"] = columns["example_id"].astype(np.int32)
    columns["margin"] = columns["margin"].astype(np.float64)
    write_raw(tmp_path / "m.parquet", columns, raw_meta())
    m = read_manifest(tmp_path / "m.parquet")
    assert m.table.schema.field("example_id").type == pa.int64()
    assert m.table.schema.field("margin").type == pa.float32()


# --------------------------------------------------------------------------- writer errors
def test_writer_rejects_bad_input_with_config_errors(tmp_path):
    path = tmp_path / "m.parquet"
    columns = make_columns()
    del columns["score"], columns["reason"]
    with pytest.raises(ConfigError, match="missing required columns score, reason"):
        write_manifest(path, columns, make_metadata())
    columns = make_columns()
    columns["label"] = columns["label"][:-1]
    with pytest.raises(ConfigError, match=rf"differ in length: example_id has {N} rows, label has {N - 1}"):
        write_manifest(path, columns, make_metadata())
    columns = make_columns()
    columns["presentations"] = np.full(N, 2.5)
    with pytest.raises(ConfigError, match="column presentations cannot be stored as int32"):
        write_manifest(path, columns, make_metadata())
    with pytest.raises(ConfigError, match="no rows are selected"):
        write_manifest(path, {**make_columns(), "selected": np.zeros(N, bool), "reason": np.full(N, "")},
                       make_metadata())
    meta = make_metadata()
    del meta["selection"]["rule"]
    with pytest.raises(ConfigError, match="lacks selection.rule"):
        write_manifest(path, make_columns(), meta)
    with pytest.raises(ConfigError, match=rf"holds {N} rows but dataset.size is {N + 1}"):
        write_manifest(path, make_columns(), make_metadata(N + 1))
    assert not path.exists()


def test_writer_stores_numpy_metadata_as_json(tmp_path):
    meta = make_metadata()
    meta["selection"]["fraction"] = np.float32(0.25)
    meta["provenance"]["sparsities"] = np.array([0.5, 0.9])
    meta["provenance"]["where"] = tmp_path
    m = read_manifest(write_manifest(tmp_path / "m.parquet", make_columns(), meta))
    assert m.selection["fraction"] == 0.25 and m.provenance["sparsities"] == [0.5, 0.9]
    assert m.provenance["where"] == str(tmp_path)


# --------------------------------------------------------------------------- load_subset
@pytest.fixture(scope="module")
def digits_head(digits):
    """The first 120 training examples of digits: images (N, 8, 8) uint8, labels, hashes."""
    n = 120
    return digits.train.images[:n, 0].numpy(), digits.train.labels[:n].numpy(), digits.train_hashes[:n]


@pytest.fixture(scope="module")
def digits_manifest(digits_head, tmp_path_factory):
    images, labels, hashes = digits_head
    n = len(labels)
    selected = np.random.default_rng(3).random(n) < 0.4
    path = tmp_path_factory.mktemp("manifest") / "digits.parquet"
    return write_manifest(path, make_columns(n, hashes=hashes, labels=labels, selected=selected),
                          make_metadata(n, name="digits"))


def pixels_dataset(images, labels):
    import datasets

    features = datasets.Features({"pixels": datasets.Array2D((8, 8), "uint8"), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"pixels": images, "label": labels}, features=features)


def image_dataset(images, labels):
    import datasets
    from PIL import Image

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    return datasets.Dataset.from_dict({"image": [Image.fromarray(x) for x in images], "label": labels.tolist()},
                                      features=features)


def _pixels(subset, column="pixels") -> np.ndarray:
    return np.asarray(subset.with_format("numpy")[column]).astype(np.uint8)


def _assert_selected_examples(subset, images, labels, m) -> None:
    """``subset`` holds exactly the manifest's selected examples, in id order: their pixels and labels."""
    np.testing.assert_array_equal(_pixels(subset), images[m.selected_ids])
    np.testing.assert_array_equal(subset["label"], labels[m.selected_ids])


def test_load_subset_by_id_and_hash_in_order(digits_head, digits_manifest):
    images, labels, _ = digits_head
    m = read_manifest(digits_manifest)
    ds = pixels_dataset(images, labels)
    for match in ("id", "hash", "auto"):
        subset = load_subset(m, ds, match=match, image_column="pixels")
        assert len(subset) == m.num_selected
        _assert_selected_examples(subset, images, labels, m)
    # A path works as well as a Manifest.
    assert len(load_subset(digits_manifest, ds, match="id")) == m.num_selected


def test_load_subset_on_a_shuffled_copy(digits_head, digits_manifest, caplog):
    images, labels, _ = digits_head
    m = read_manifest(digits_manifest)
    shuffled = pixels_dataset(images, labels).shuffle(seed=7).flatten_indices()
    with caplog.at_level(logging.INFO, logger="pracset.manifest.subset"):
        by_auto = load_subset(m, shuffled, image_column="pixels")
    assert "selected by hash (match='auto')" in caplog.text
    by_hash = load_subset(m, shuffled, match="hash", image_column="pixels")
    for subset in (by_auto, by_hash):
        _assert_selected_examples(subset, images, labels, m)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pracset.manifest.subset"):
        load_subset(m, pixels_dataset(images, labels), image_column="pixels")
    assert "selected by id (match='auto')" in caplog.text


def test_load_subset_with_an_image_feature_and_extra_rows(digits_head, digits_manifest):
    images, labels, _ = digits_head
    m = read_manifest(digits_manifest)
    # A superset in another order: the examples reversed, plus upside-down copies of ten of them.
    extra = images[:10, ::-1].copy()
    ds = image_dataset(np.concatenate([images[::-1], extra]), np.concatenate([labels[::-1], labels[:10]]))
    subset = load_subset(m, ds)  # auto: length differs, so hash; the Image and ClassLabel columns are found
    np.testing.assert_array_equal(_pixels(subset, "image"), images[m.selected_ids])


def test_load_subset_names_missing_examples(digits_head, digits_manifest):
    images, labels, hashes = digits_head
    m = read_manifest(digits_manifest)
    dropped = m.selected_ids[[1, 4, 5]]
    keep = np.setdiff1d(np.arange(len(labels)), dropped)
    ds = pixels_dataset(images[keep], labels[keep])
    for match in ("hash", "auto"):
        with pytest.raises(ManifestError, match=rf"3 of {m.num_selected} selected examples of manifest .* were not "
                                                rf"found in the dataset \(first: example_id {dropped[0]}, "
                                                rf"content_hash {hashes[dropped[0]]}\)"):
            load_subset(m, ds, match=match, image_column="pixels")
    with pytest.raises(ManifestError, match=rf"match='id' needs a dataset .*\({len(labels)} rows\), this one has "
                                            rf"{len(keep)}"):
        load_subset(m, ds, match="id")


def test_load_subset_argument_errors(digits_head, digits_manifest):
    import datasets

    images, labels, _ = digits_head
    ds = pixels_dataset(images, labels)
    with pytest.raises(ConfigError, match="match must be one of auto, id, hash"):
        load_subset(digits_manifest, ds, match="position")
    with pytest.raises(ConfigError, match=r"pass the training split, e\.g\. dataset\['train'\]"):
        load_subset(digits_manifest, datasets.DatasetDict({"train": ds}))
    with pytest.raises(ManifestError, match="does not exist"):
        load_subset(digits_manifest.parent / "missing.parquet", ds)


@pytest.fixture
def rows_hashed(monkeypatch):
    """A list that receives the number of rows of every call of ``content_hashes`` (which still runs)."""
    import pracset.data.base

    calls: list[int] = []
    real = pracset.data.base.content_hashes

    def counting(images, labels):
        calls.append(len(labels))
        return real(images, labels)

    monkeypatch.setattr(pracset.data.base, "content_hashes", counting)
    return calls


def test_auto_on_an_intact_copy_matches_by_id_hashing_only_a_sample(digits_head, digits_manifest, rows_hashed, caplog):
    images, labels, _ = digits_head
    m = read_manifest(digits_manifest)
    with caplog.at_level(logging.INFO, logger="pracset.manifest.subset"):
        subset = load_subset(m, pixels_dataset(images, labels), image_column="pixels")
    assert "selected by id (match='auto')" in caplog.text
    assert rows_hashed == [64]  # the fixed sample of 64 of the 120 rows, not every row
    _assert_selected_examples(subset, images, labels, m)


def test_auto_on_a_copy_reordered_within_classes_falls_back_to_hashes(digits_head, digits_manifest,
                                                                      rows_hashed, caplog):
    """Every row keeps its label, so only the hashed sample can tell that the rows are other examples."""
    images, labels, _ = digits_head
    m = read_manifest(digits_manifest)
    order = np.arange(len(labels))
    for label in np.unique(labels):  # reverse the rows of each class among the positions of that class
        positions = np.flatnonzero(labels == label)
        order[positions] = positions[::-1]
    assert (labels[order] == labels).all() and (order != np.arange(len(labels))).sum() > 100
    with caplog.at_level(logging.INFO, logger="pracset.manifest.subset"):
        subset = load_subset(m, pixels_dataset(images[order], labels[order]), image_column="pixels")
    assert "selected by hash (match='auto')" in caplog.text
    assert rows_hashed == [64, len(labels)]  # the sample disagreed, then every row was hashed
    _assert_selected_examples(subset, images, labels, m)


def test_auto_on_a_shuffled_copy_returns_the_manifests_examples_by_hash(digits_head, digits_manifest, rows_hashed):
    images, labels, _ = digits_head
    m = read_manifest(digits_manifest)
    permutation = np.random.default_rng(11).permutation(len(labels))
    subset = load_subset(m, pixels_dataset(images[permutation], labels[permutation]), image_column="pixels")
    assert rows_hashed == [len(labels)]  # the labels already disagree: no sample is hashed
    _assert_selected_examples(subset, images, labels, m)


def test_id_on_a_shuffled_copy_is_refused_and_on_an_intact_copy_reads_no_image(digits_head, digits_manifest,
                                                                               rows_hashed):
    images, labels, _ = digits_head
    m = read_manifest(digits_manifest)
    permutation = np.random.default_rng(11).permutation(len(labels))
    disagreeing = int((labels[permutation] != labels).sum())
    assert 0 < disagreeing < len(labels)
    with pytest.raises(ManifestError, match=rf"^match='id': {disagreeing} of {len(labels)} rows of the dataset have "
                                            r"another label than manifest .* use match='hash'$"):
        load_subset(m, pixels_dataset(images[permutation], labels[permutation]), match="id")
    subset = load_subset(m, pixels_dataset(images, labels), match="id")
    np.testing.assert_array_equal(_pixels(subset), images[m.selected_ids])
    assert rows_hashed == []


def test_id_names_a_missing_label_column_as_the_python_argument(digits_head, digits_manifest):
    import datasets

    images, labels, _ = digits_head
    ds = datasets.Dataset.from_dict({"pixels": images.tolist(), "target": labels.tolist()})
    with pytest.raises(PracsetError, match=r"^the dataset given to load_subset has no label column 'label' .*; "
                                           r"pass label_column$"):
        load_subset(digits_manifest, ds, match="id")
    assert len(load_subset(digits_manifest, ds, match="id", label_column="target")) == len(read_manifest(
        digits_manifest).selected_ids)


def test_image_size_resizes_images_of_different_sizes(tmp_path):
    """Flat images of 8x8, 12x12 and 16x16 pixels: resized bilinearly to 8x8 they stay flat, so their pixels are known."""
    import datasets
    import torch
    from PIL import Image

    from pracset.data.base import content_hashes

    n = 30
    levels = np.arange(n, dtype=np.uint8) * 8  # example i is flat at grey level 8 * i
    labels = np.arange(n) % 3
    sides = np.array([8, 12, 16])[np.arange(n) % 3]
    expected_pixels = np.repeat(levels, 64).reshape(n, 1, 8, 8)
    hashes = content_hashes(torch.from_numpy(expected_pixels), torch.from_numpy(labels))
    selected = np.arange(n) % 4 == 1
    m = read_manifest(write_manifest(tmp_path / "m.parquet", make_columns(n, hashes=hashes, labels=labels,
                                                                           selected=selected), make_metadata(n)))
    permutation = np.random.default_rng(5).permutation(n)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=3)})
    for order in (np.arange(n), permutation):
        ds = datasets.Dataset.from_dict(
            {"image": [Image.fromarray(np.full((sides[i], sides[i]), levels[i], np.uint8)) for i in order],
             "label": labels[order].tolist()}, features=features)
        for match in ("auto", "hash"):
            subset = load_subset(m, ds, match=match, image_size=8)
            kept = [np.asarray(image) for image in subset["image"]]
            assert [image.shape[0] for image in kept] == list(sides[selected])  # the rows, not resized copies
            assert [int(image[0, 0]) for image in kept] == list(levels[selected])
            assert subset["label"] == list(labels[selected])
        with pytest.raises(PracsetError, match=r"^the dataset given to load_subset: images differ in size "
                                               r"\(12x12, 16x16, 8x8\); pass image_size=N to resize them$"):
            load_subset(m, ds, match="hash")
    with pytest.raises(ConfigError, match="image_size must be a positive integer, got 0"):
        load_subset(m, ds, image_size=0)


def test_hash_matching_pairs_duplicates_as_a_multiset(tmp_path):
    m = read_manifest(write_manifest(tmp_path / "m.parquet", make_columns(), make_metadata()))
    hashes = np.array(["b", "a", "c", "a"])
    np.testing.assert_array_equal(_match_hashes(hashes, np.array(["a", "c", "a"]), np.arange(3), m, ManifestError),
                                  [1, 2, 3])
    with pytest.raises(ManifestError, match=r"1 of 3 selected examples .*first: example_id 12, content_hash a"):
        _match_hashes(hashes[:3], np.array(["a", "c", "a"]), np.array([10, 11, 12]), m, ManifestError)


def test_a_manifest_whose_hashes_were_altered_is_refused(tmp_path):
    """The header's fingerprint is recomputed from the rows' own hashes; an edited hash no longer gives it."""
    import pyarrow as pa

    from pracset.data import DataConfig, load_dataset
    from pracset.fingerprints import fingerprint

    data = load_dataset(DataConfig("digits"))
    n = len(data.train)
    columns = make_columns(n=n, seed=3)
    columns["content_hash"] = data.train_hashes
    meta = make_metadata(n=n, name="digits", fingerprint=data.fingerprint)
    meta["dataset"]["class_names"] = list(data.class_names)
    assert fingerprint(data.train_hashes, data.class_names) == data.fingerprint
    path = write_manifest(tmp_path / "m.parquet", columns, meta)
    assert read_manifest(path, fingerprint=data.fingerprint).size == n
    table = pq.read_table(path)
    hashes = table.column("content_hash").to_pylist()
    hashes[5] = "0123456789abcdef"
    forged = table.set_column(table.schema.get_field_index("content_hash"), "content_hash", pa.array(hashes))
    pq.write_table(forged, tmp_path / "forged.parquet")
    with pytest.raises(ManifestError, match=r"its content hashes do not give the fingerprint its header claims"):
        read_manifest(tmp_path / "forged.parquet", fingerprint=data.fingerprint)
