"""The shared readers (pracset.data.readers): every kind of tree lists and reads the same files."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import pytest

from pracset.data.readers import (ArchiveTree, FolderTree, TarTree, list_image_folder, open_tree, read_tree,
                                  single_top)
from pracset.errors import DataError

FILES = {"train/b/2.png": b"b2", "train/a/x/1.png": b"a1", "train/a/0.png": b"a0", "test/a/9.png": b"t9",
         "test/b/8.png": b"t8", "train/notes.txt": b"not an image"}


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "tree"
    for rel, data in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _tar(folder: Path, out: Path, mode: str) -> Path:
    with tarfile.open(out, mode) as handle:
        handle.add(folder, arcname="wrapper")  # one wrapping folder, stripped by every tree
    return out


def test_single_top_strips_one_wrapping_folder_only():
    assert single_top(["w/train/a/1.png", "w/test/a/2.png"]) == "w/"
    assert single_top(["train/a/1.png", "test/a/2.png"]) == ""
    assert single_top(["train/a/1.png"]) == ""  # a lone split folder is not a wrapper


def test_every_tree_lists_and_reads_the_same_files(folder, tmp_path):
    plain, packed = _tar(folder, tmp_path / "t.tar", "w"), _tar(folder, tmp_path / "t.tar.gz", "w:gz")
    trees = [FolderTree(folder), ArchiveTree(plain), ArchiveTree(packed), TarTree(plain),
             open_tree(packed, extract_to=tmp_path / "x")]
    assert isinstance(read_tree(folder), FolderTree) and isinstance(read_tree(packed), ArchiveTree)
    assert isinstance(open_tree(folder), FolderTree) and isinstance(open_tree(plain), TarTree)
    for tree in trees:
        assert tree.paths == sorted(FILES), type(tree)
        assert {rel: tree.read(rel) for rel in tree.paths} == FILES, type(tree)
    # a TarTree travels to worker processes without its descriptor and reopens the archive there
    copy = pickle.loads(pickle.dumps(trees[3]))
    assert copy.read("test/b/8.png") == b"t8"


def test_image_folder_listing_is_in_canonical_id_order(folder):
    listing = list_image_folder(FolderTree(folder))
    assert listing.classes == ["a", "b"] and listing.test_split == "test"
    assert listing.train_files == ["train/a/0.png", "train/a/x/1.png", "train/b/2.png"]
    assert listing.train_labels.tolist() == [0, 0, 1]
    assert (listing.test_files, listing.test_labels.tolist()) == (["test/a/9.png", "test/b/8.png"], [0, 1])


def test_tree_errors(tmp_path):
    other = tmp_path / "plain.bin"
    other.write_bytes(b"hello")
    for opener in (read_tree, open_tree):
        with pytest.raises(DataError, match="neither a directory nor a tar archive"):
            opener(other)
    with pytest.raises(DataError, match="does not exist"):
        open_tree(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no train/<class>/<image> files"):
        list_image_folder(FolderTree(tmp_path / "empty"))
