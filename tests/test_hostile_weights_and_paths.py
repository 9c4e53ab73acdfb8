"""Issue 23, items 1 and 4: pretrained weights from torch's hub cache, paths that are not regular files, and
counts with no natural bound.

* Item 1, "code from a cache": ``--weights`` reads ``torch.hub.get_dir()/checkpoints/<name>``; a file there
  must match the sha256 prefix torchvision publishes in its name before it is loaded, and it is loaded with
  ``weights_only=True`` only. Nothing here touches the network: the hub directory is a temporary one, and the
  one download test replaces ``torch.hub.download_url_to_file``.
* Item 4, "hangs": a FIFO, a device or a directory where pracset expects a regular file is refused in one line
  naming it, BEFORE it is opened (opening a FIFO blocks forever). Every such case runs in a child process with
  a timeout (the ``cli`` fixture: a warm process forks one child per case, killed by ``alarm`` if it hangs), so
  a regression fails the test instead of hanging the suite. Counts (``--threads``, IMP rounds,
  ``--cep-rounds``) are bounded, refused before any training.

Command-line cases check exit code 2, exactly one line on stderr (``pracset CMD: error: ...``), no
traceback, nothing on stdout, and that the case's directory is unchanged (nothing written, nothing lost).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
import torch

from commands import ForkRunner
from hostile import RunsCode

TINY = ["--epochs", "1", "--batch-size", "64", "--device", "cpu", "-q"]

# ----------------------------------------------------------------------------- a child process per case
# The ``cli`` fixture (conftest.py, commands.ForkRunner): a warm process forks one child per case.


def _tree(root: Path) -> dict[str, tuple]:
    """What lies under ``root``, never opening anything that is not a regular file (a FIFO would block)."""
    seen = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            info = os.lstat(path)
            key = str(path.relative_to(root))
            if stat.S_ISREG(info.st_mode):
                seen[key] = ("file", info.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
            elif stat.S_ISDIR(info.st_mode):  # its mtime moves with a lock taken and released: not a change
                seen[key] = ("directory",)
            else:
                seen[key] = (stat.S_IFMT(info.st_mode), info.st_mtime_ns)
    return seen


def _one_line(rc: int, out: str, err: str, prefix: str) -> str:
    assert "Traceback" not in err, err
    assert rc == 2, (rc, err)
    assert err.endswith("\n") and err.count("\n") == 1, f"stderr is not one line: {err!r}"
    assert err.startswith(prefix), err
    assert out == "", out
    return err[len(prefix):-1]


def _refused(cli: ForkRunner, cwd: Path, argv: list[str], *, env: dict | None = None, timeout: int = 30) -> str:
    """Run ``pracset ARGV`` in ``cwd``: exit 2, one line, and ``cwd`` exactly as it was; returns the message."""
    before = _tree(cwd)
    rc, out, err = cli.run(argv, cwd, env=env, timeout=timeout)
    message = _one_line(rc, out, err, f"pracset {argv[0]}: error: ")
    assert _tree(cwd) == before, "the refused command changed the directory"
    return message


def _python_refused(cli: ForkRunner, cwd: Path, code: str, error: str) -> str:
    """Run ``code`` in a child: it must raise the PracsetError subclass ``error``; returns its message."""
    before = _tree(cwd)
    rc, out, err = cli.python(code, cwd, timeout=20)
    message = _one_line(rc, out, err, f"{error}: ")
    assert _tree(cwd) == before, "the refused call changed the directory"
    return message


# ============================================================================ item 4: not regular files
def test_require_regular_file_refuses_fifo_device_directory_and_returns_a_regular_path(tmp_path):
    from pracset.errors import ConfigError, DataError
    from pracset.fileio import require_regular_file

    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "file").write_bytes(b"x")
    os.symlink(tmp_path / "file", tmp_path / "link")
    assert require_regular_file(tmp_path / "file") == tmp_path / "file"
    assert require_regular_file(str(tmp_path / "link")) == tmp_path / "link"  # a link to a regular file is one
    for path, kind in ((tmp_path / "fifo", "a FIFO (named pipe)"), ("/dev/zero", "a character device"),
                       (tmp_path, "a directory")):
        with pytest.raises(ConfigError) as caught:
            require_regular_file(path, "settings file")
        assert str(caught.value) == f"settings file {path} is {kind}, not a regular file; pracset reads only regular files"
    with pytest.raises(DataError, match="is a symbolic link"):
        require_regular_file(tmp_path / "link", "data file", error=DataError, follow_symlinks=False)
    with pytest.raises(FileNotFoundError):  # a missing path keeps the caller's own wording
        require_regular_file(tmp_path / "missing")


def test_pipeline_file_that_is_a_fifo(cli, tmp_path):
    os.mkfifo(tmp_path / "p.toml")
    message = _refused(cli, tmp_path, ["run", "p.toml"])
    assert message == "pipeline file p.toml is a FIFO (named pipe), not a regular file; pracset reads only regular files"


def test_config_file_that_is_a_fifo_or_a_directory(cli, tmp_path):
    os.mkfifo(tmp_path / "c.toml")
    (tmp_path / "d.toml").mkdir()
    for name, kind in (("c.toml", "a FIFO (named pipe)"), ("d.toml", "a directory")):
        message = _refused(cli, tmp_path, ["train", "--config", name, "--data", "digits", "--arch", "mlp",
                                              "--out", "out", *TINY])
        assert message == f"settings file {name} is {kind}, not a regular file; pracset reads only regular files"


def test_manifest_that_is_a_fifo(cli, tmp_path):
    os.mkfifo(tmp_path / "m.parquet")
    assert _refused(cli, tmp_path, ["inspect", "m.parquet"]) == \
        "manifest m.parquet is a FIFO (named pipe), not a regular file; pracset reads only regular files"


def test_ticket_manifest_that_is_a_fifo(cli, tmp_path):
    os.mkfifo(tmp_path / "m.parquet")
    message = _refused(cli, tmp_path, ["ticket", "--method", "imp", "--data", "digits", "--arch", "mlp",
                                          "--manifest", "m.parquet", "--sparsity", "0.2", "--out", "out", *TINY])
    assert message.startswith("manifest m.parquet is a FIFO (named pipe), not a regular file")


def test_run_record_that_is_a_fifo(cli, tmp_path):
    (tmp_path / "out").mkdir()
    os.mkfifo(tmp_path / "out" / "run.json")
    message = _refused(cli, tmp_path, ["train", "--data", "digits", "--arch", "mlp", "--out", "out",
                                          "--resume", *TINY])
    assert message == ("run record out/run.json is a FIFO (named pipe), not a regular file; pracset reads only "
                       "regular files")


def test_data_dir_that_is_a_device_or_a_fifo(cli, tmp_path):
    """``tarfile.is_tarfile`` of /dev/zero or of a FIFO never returns: the imagefolder source checked it first."""
    os.mkfifo(tmp_path / "data.tar")
    for where, kind in (("/dev/zero", "a character device"), ("data.tar", "a FIFO (named pipe)")):
        message = _refused(cli, tmp_path, ["train", "--data", "imagefolder", "--data-dir", where, "--arch", "mlp",
                                              "--out", "out", *TINY])
        assert message == f"data file {where} is {kind}, not a regular file; pracset reads only regular files"


# Python entry points of the other read sites: each gets a FIFO where it reads a file.
_SITES = [
    ("mask", "RunFileError", "mask file {f}",
     "from pracset.sparse.mask import Mask; Mask.load({f!r})"),
    ("ids", "RunFileError", "id file {f}",
     "from pracset.tickets.rounds import load_ids; load_ids({f!r})"),
    ("run-json", "RunFileError", "ledger {f}",
     "from pracset.runfiles import read_json; read_json({f!r}, 'ledger')"),
    ("rewind", "RunFileError", "rewind point {f}",
     "from types import SimpleNamespace as NS; from pathlib import Path; import torch\n"
     "from pracset.tickets.context import TicketContext\n"
     "TicketContext.load_rewind_point(NS(layout=NS(rewind=Path({f!r})), model=lambda: torch.nn.Linear(2, 2)), 0)"),
    ("stage-model", "RunFileError", "model weights {f}",
     "from types import SimpleNamespace as NS; from pathlib import Path; import torch\n"
     "from pracset.tickets.context import TicketContext\n"
     "TicketContext.load_model(NS(model=lambda: torch.nn.Linear(2, 2), device='cpu'), NS(model=Path({f!r})))"),
    ("checkpoint", "RunFileError", "checkpoint {f}",
     "from types import SimpleNamespace as NS; from pathlib import Path\n"
     "from pracset.train.loop import Trainer\n"
     "Trainer._load_checkpoint(NS(checkpoint=Path({f!r})), None, [])"),
    ("idx", "DataError", "idx file {f}",
     "from pathlib import Path; from pracset.data import read_idx; read_idx(Path({f!r}))"),
    ("cifar", "DataError", "CIFAR batch {f}",
     "from pathlib import Path; from pracset.data.sources import CifarSource; CifarSource._unpickle(Path({f!r}))"),
    ("archive", "DataError", "archive {f}",
     "from pathlib import Path; from pracset.data.readers import ArchiveTree; ArchiveTree(Path({f!r}))"),
    ("tar", "DataError", "archive {f}",
     "from pathlib import Path; from pracset.data.readers import TarTree; TarTree(Path({f!r}))"),
    ("compressed", "DataError", "archive {f}",
     "from pathlib import Path; from pracset.data.readers import is_compressed; is_compressed(Path({f!r}))"),
    ("extract", "DataError", "archive {f}",
     "from pracset.data.readers import extract_archive; extract_archive({f!r}, 'extracted')"),
    ("open-tree", "DataError", "--data-dir {f}",
     "from pracset.data.readers import open_tree; open_tree({f!r}, extract_to='extracted')"),
    ("read-tree", "DataError", "data file {f}",
     "from pathlib import Path; from pracset.data.readers import read_tree; read_tree(Path({f!r}))"),
    ("folder-image", "DataError", "image file {f}",
     "from pathlib import Path; from pracset.data.readers import FolderTree\n"
     "tree = FolderTree(Path('.')); tree.read({f!r})"),
    ("hf-row-image", "DataError", "image file {f}",
     "from pracset.data.hf_readers import _blob; _blob({{'bytes': None, 'path': {f!r}}})"),
]


@pytest.mark.parametrize("site, error, what, code", _SITES, ids=[s[0] for s in _SITES])
def test_read_site_refuses_a_fifo(cli, tmp_path, site, error, what, code):
    os.mkfifo(tmp_path / "fifo")
    message = _python_refused(cli, tmp_path, code.format(f="fifo"), error)
    assert message == (f"{what.format(f='fifo')} is a FIFO (named pipe), not a regular file; pracset reads only "
                       "regular files")


def test_an_image_a_hugging_face_row_names_by_path_is_read_only_as_a_regular_file_of_a_sane_size(tmp_path):
    """A row's ``path`` comes from a stranger's data set: a link is not followed and a file larger than any
    image data set's file is refused by its size, before it is read."""
    from pracset.data.hf_readers import _blob
    from pracset.data.readers import MAX_FILE_BYTES
    from pracset.errors import DataError

    real = tmp_path / "a.png"
    real.write_bytes(b"png bytes")
    assert _blob({"bytes": None, "path": str(real)}) == b"png bytes"
    (tmp_path / "link.png").symlink_to(real)
    with pytest.raises(DataError, match=r"image file .*link\.png is a symbolic link, not a regular file"):
        _blob({"bytes": None, "path": str(tmp_path / "link.png")})
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk used
    with pytest.raises(DataError, match=rf"huge\.png is {MAX_FILE_BYTES + 1} bytes, more than an image data set"):
        _blob({"bytes": None, "path": str(huge)})


# ============================================================================ item 4: counts
def test_threads_beyond_the_bound(cli, tmp_path):
    """10**8 threads crash torch (a segmentation fault): refused in one line before anything runs."""
    message = _refused(cli, tmp_path, ["train", "--data", "digits", "--arch", "mlp", "--out", "out",
                                          "--threads", str(10 ** 8), *TINY])
    assert message == "threads must be at most 1024, got 100000000"


def test_imp_rounds_beyond_the_bound(cli, tmp_path):
    message = _refused(cli, tmp_path, ["ticket", "--method", "imp", "--data", "digits", "--arch", "mlp",
                                          "--rounds", "62", "--out", "out", *TINY])
    assert message == ("62 IMP rounds at prune_fraction 0.2 would keep 9.81e-07 of the weights; from round 62 on "
                       "the mask keeps under 1e-06 of them (empty for a model under a million weights): at most "
                       "61 rounds at this prune_fraction")


def test_imp_rounds_that_would_empty_this_models_mask(cli, tmp_path):
    """The MLP on digits has 50,432 prunable weights: halving them 16 times leaves under one."""
    message = _refused(cli, tmp_path, ["ticket", "--method", "prac-imp", "--data", "digits", "--arch", "mlp",
                                          "--rounds", "18", "--prune-fraction", "0.5", "--out", "out", *TINY])
    assert message == ("IMP round 16 of 18 would leave the mask empty: pruning 0.5 per round keeps 0.77 of the "
                       "model's 50432 prunable weights; at most 15 rounds for this model")


def test_cep_rounds_beyond_the_bound(cli, tmp_path):
    message = _refused(cli, tmp_path, ["build", "--data", "digits", "--arch", "mlp", "--out", "m.parquet",
                                          "--cep", "trained", "--cep-rounds", str(10 ** 9), *TINY])
    assert message == ("cep_rounds must be at most 60: 1000000000 rounds of 0.2 pruning (and one more for the "
                       "selected set) would keep 0 of the weights, under 1e-06")


def test_round_bounds_in_python():
    from pracset.build import BuildConfig
    from pracset.errors import ConfigError
    from pracset.tickets.config import IMPConfig, max_rounds

    assert max_rounds(0.2) == 61 and 0.8 ** 61 >= 1e-6 > 0.8 ** 62
    assert IMPConfig(rounds=61).num_rounds == 61 and BuildConfig(cep_rounds=60).cep_rounds == 60
    for bad in (dict(rounds=62), dict(rounds=10 ** 400), dict(sparsity=1 - 1e-7)):
        with pytest.raises(ConfigError, match="at most 61 rounds at this prune_fraction"):
            IMPConfig(**bad)
    with pytest.raises(ConfigError, match="^IMP round 10 of 12 would leave the mask empty"):
        IMPConfig(rounds=12, prune_fraction=0.5).check_rounds_fit(1000)
    IMPConfig(rounds=9, prune_fraction=0.5).check_rounds_fit(1000)  # 1000 / 2**9 ~ 1.95: still one weight


def test_rounds_that_would_empty_a_layer_pruned_on_its_own():
    """A layer pruned at its own rate loses round(rate * kept) a round (as magnitude_prune does), known in advance:
    10 output weights at 0.8 keep 10 - 8 = 2, then 2 - round(1.6) = 0 at round 2; layerwise 0.7 on a layer of
    3 keeps 3 - round(2.1) = 1, then 1 - round(0.7) = 0 at round 2; at 0.5 a single weight stays (round(0.5) = 0)."""
    from pracset.errors import ConfigError
    from pracset.tickets.config import IMPConfig

    layers = {"hidden.weight": 5000, "out.weight": 10}
    with pytest.raises(ConfigError, match=r"^IMP round 2 of 3 would leave layer out\.weight empty: pruning 0\.8 of "
                                          r"it per round keeps none of its 10 weights; at most 1 rounds"):
        IMPConfig(rounds=3, output_rate=0.8).check_rounds_fit(5010, layers)
    IMPConfig(rounds=1, output_rate=0.8).check_rounds_fit(5010, layers)
    IMPConfig(rounds=3, output_rate=0.8).check_rounds_fit(5010)  # without the layers only the total is known
    small = {"a.weight": 3, "b.weight": 4000}
    with pytest.raises(ConfigError, match=r"^IMP round 2 of 2 would leave layer a\.weight empty"):
        IMPConfig(rounds=2, prune_fraction=0.7, ranking="layerwise").check_rounds_fit(4003, small)
    IMPConfig(rounds=2, prune_fraction=0.7).check_rounds_fit(4003, small)  # global: weight-dependent, checked later
    IMPConfig(rounds=8, prune_fraction=0.5, ranking="layerwise").check_rounds_fit(4003, small)


def test_a_mask_with_an_emptied_layer_stops_the_rounds():
    from pracset.errors import ConfigError
    from pracset.sparse.mask import Mask
    from pracset.tickets.config import check_layers_kept

    check_layers_kept(Mask({"a": torch.tensor([True, False]), "b": torch.tensor([False, True])}), "round-02")
    with pytest.raises(ConfigError, match=r"^the mask pruned from round-02 keeps no weight of layer b \(and 1 more\): "
                                          "the network could not learn, so the rounds stop"):
        check_layers_kept(Mask({"a": torch.tensor([True]), "b": torch.zeros(2, dtype=torch.bool),
                                "c": torch.zeros(1, dtype=torch.bool)}), "round-02")


# ============================================================================ item 1: pretrained weights
RESNET18 = "resnet18-f37072fd.pth"  # ResNet18_Weights.IMAGENET1K_V1: its sha256 starts with f37072fd


def _plant(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def test_planted_code_in_the_hub_cache_is_refused_and_never_runs(cli, tmp_path):
    """A pickle that calls os.system, under the exact name torchvision looks for: refused by its hash, unrun."""
    marker = tmp_path / "ran"
    planted = _plant(tmp_path / "torch" / "hub" / "checkpoints" / RESNET18, {"fc.weight": RunsCode(marker)})
    before = _tree(tmp_path)
    rc, out, err = cli.run(["train", "--data", "digits", "--arch", "torchvision/resnet18", "--weights",
                            "IMAGENET1K_V1", "--out", "out", *TINY], tmp_path,
                           env={"TORCH_HOME": str(tmp_path / "torch")}, timeout=60)
    assert not marker.exists(), "the planted file ran code"
    message = _one_line(rc, out, err, "pracset train: error: ")
    assert _tree(tmp_path) == before, "the refused command changed the directory"
    assert message.startswith(f"pretrained weights file {planted} does not match the published hash of "
                              "ResNet18_Weights.IMAGENET1K_V1 (its sha256 starts ")
    assert message.endswith("expected f37072fd); refused without loading it: delete it and place the file "
                            "published at https://download.pytorch.org/models/resnet18-f37072fd.pth there (its "
                            "sha256 must start with f37072fd, the hash in its name, or pracset refuses it)")


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """A private torch hub directory (nothing of the user's cache is read); returns its checkpoints folder."""
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert Path(torch.hub.get_dir()) == tmp_path / "torch" / "hub"
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    return checkpoints


SPEC = dict(channels=3, height=64, width=64, num_classes=1000)


def _squeezenet_published_as(monkeypatch, path: Path) -> str:
    """Make SqueezeNet1_1_Weights publish ``path``'s own sha256 prefix in its url, as torchvision names files."""
    import torchvision

    prefix = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    url = f"https://download.invalid/models/squeezenet1_1-{prefix}.pth"
    monkeypatch.setattr(torchvision.models.SqueezeNet1_1_Weights, "url", property(lambda self: url))
    return prefix


def test_valid_state_dict_whose_hash_does_not_match_is_refused_and_kept(hub):
    """A real state dict under the published name, but not the published file: refused, and left as it was."""
    from pracset.errors import ConfigError
    from pracset.models import InputSpec, build_model

    planted = _plant(hub / RESNET18, {"fc.bias": torch.zeros(1000)})
    before = planted.read_bytes()
    with pytest.raises(ConfigError) as caught:
        build_model("torchvision/resnet18", InputSpec(**SPEC), weights="IMAGENET1K_V1")
    assert str(caught.value).startswith(f"pretrained weights file {planted} does not match the published hash")
    assert "\n" not in str(caught.value)
    assert planted.read_bytes() == before


def test_verified_weights_are_loaded(hub, tmp_path, monkeypatch):
    """The happy path, offline: a file whose sha256 matches the (patched) published prefix is what the model holds."""
    import torchvision
    from torchvision.models._api import WeightsEnum

    from pracset.models import InputSpec, build_model

    torch.manual_seed(1)
    state = torchvision.models.squeezenet1_1().state_dict()
    source = _plant(tmp_path / "weights.pth", state)
    prefix = _squeezenet_published_as(monkeypatch, source)
    (hub / f"squeezenet1_1-{prefix}.pth").write_bytes(source.read_bytes())
    original = WeightsEnum.__dict__["get_state_dict"]

    def unchecked(*args, **kwargs):
        raise AssertionError("torchvision's own loader (weights_only=False, no hash check) was used")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", unchecked)
    model = build_model("torchvision/squeezenet1_1", InputSpec(**SPEC), weights="IMAGENET1K_V1", seed=2)
    assert torch.equal(model.features[0].weight, state["features.0.weight"])
    assert torch.equal(model.classifier[1].bias, state["classifier.1.bias"])
    assert WeightsEnum.__dict__["get_state_dict"] is original  # torchvision's own loader is back in place


def test_code_with_a_matching_hash_is_still_loaded_as_tensors_only(hub, tmp_path, monkeypatch):
    """Even a file whose hash matches is loaded with weights_only=True: the os.system it holds never runs."""
    from pracset.errors import ConfigError
    from pracset.models import InputSpec, build_model

    marker = tmp_path / "ran"
    source = _plant(tmp_path / "weights.pth", {"features.0.weight": RunsCode(marker)})
    prefix = _squeezenet_published_as(monkeypatch, source)
    planted = hub / f"squeezenet1_1-{prefix}.pth"
    planted.write_bytes(source.read_bytes())
    with pytest.raises(ConfigError) as caught:
        build_model("torchvision/squeezenet1_1", InputSpec(**SPEC), weights="IMAGENET1K_V1")
    assert not marker.exists(), "the file ran code"
    assert str(caught.value) == (f"pretrained weights file {planted} holds more than tensors; refused (loading it "
                                 "could run code)")


def test_absent_weights_are_downloaded_with_the_hash_check(hub, monkeypatch):
    """An absent file goes through torch.hub.download_url_to_file WITH the published prefix; offline: one line."""
    import urllib.error

    from pracset.errors import ConfigError
    from pracset.models import InputSpec, build_model

    calls = []

    def offline(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst, hash_prefix))
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ConfigError) as caught:
        build_model("torchvision/resnet18", InputSpec(**SPEC), weights="IMAGENET1K_V1")
    assert calls == [("https://download.pytorch.org/models/resnet18-f37072fd.pth", str(hub / RESNET18), "f37072fd")]
    assert str(caught.value) == (
        f"the pretrained weights ResNet18_Weights.IMAGENET1K_V1 of torchvision/resnet18 are not in {hub / RESNET18} "
        "and could not be downloaded (<urlopen error no network>); place the file published at "
        "https://download.pytorch.org/models/resnet18-f37072fd.pth there (its sha256 must start with f37072fd, "
        "the hash in its name, or pracset refuses it)")
    assert not (hub / RESNET18).exists()


def test_fails_closed_when_torchvision_has_no_get_state_dict(hub, tmp_path, monkeypatch):
    """Without WeightsEnum.get_state_dict to feed the verified tensors through, --weights is refused, not loaded
    some other (unchecked) way or silently left random."""
    import torchvision
    from torchvision.models._api import WeightsEnum

    from pracset.errors import ConfigError
    from pracset.models import InputSpec, build_model

    source = _plant(tmp_path / "weights.pth", torchvision.models.squeezenet1_1().state_dict())
    prefix = _squeezenet_published_as(monkeypatch, source)
    (hub / f"squeezenet1_1-{prefix}.pth").write_bytes(source.read_bytes())
    monkeypatch.delattr(WeightsEnum, "get_state_dict")
    with pytest.raises(ConfigError, match="in a way pracset cannot check"):
        build_model("torchvision/squeezenet1_1", InputSpec(**SPEC), weights="IMAGENET1K_V1")


def test_a_pipeline_refuses_rounds_that_empty_a_layer_before_any_training(tmp_path, capsys):
    """``pracset run`` checks the rounds against each architecture's layers before the build trains (the IMPConfig
    alone allows 11 rounds at 0.7; layerwise, MLP's output layer of 640 weights is empty after round 7)."""
    from pracset.cli import main

    toml = tmp_path / "p.toml"
    toml.write_text('name = "p"\narch = "mlp"\nmethods = ["imp"]\n[data]\nname = "digits"\n[train]\nepochs = 1\n'
                    '[imp]\nrounds = 7\nprune_fraction = 0.7\nranking = "layerwise"\nrewind = "2it"\n')
    assert main(["run", str(toml), "--out", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pracset run: error: IMP round ") and "would leave layer " in err and "empty" in err
    assert not (tmp_path / "out").exists()
