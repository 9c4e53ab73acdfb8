"""``pracset.interop`` (torch pruning, ticket loading, Hugging Face folders) and pretrained torchvision weights.

Expected values are built by hand here: masks and zeroed copies of models,
selections written into a manifest by the test, state dicts of fresh models.
Nothing needs the network.
"""

from __future__ import annotations

import copy
import json
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml

from pracset.data import DataConfig
from pracset.errors import ConfigError
from pracset.interop import (dataset_card, from_torch_prune, load_ticket, make_permanent, push_to_hub,
                             save_hf_dataset, to_torch_prune)
from pracset.manifest import read_manifest, write_manifest
from pracset.models import InputSpec, build_model
from pracset.sparse import Mask
from pracset.tickets import IMPConfig, find_tickets
from pracset.train import TrainConfig
from pracset.train.loop import evaluate
from pracset.train.run import input_spec, make_loaders

DATA = DataConfig(name="digits")
TRAIN = TrainConfig(epochs=1, batch_size=64, lr=0.05)


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- torch.nn.utils.prune

def tiny_model_and_mask():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    keep_first = torch.tensor([[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    keep_last = torch.tensor([[0, 1, 1], [1, 0, 0]], dtype=torch.bool)
    return model, Mask({"0.weight": keep_first, "2.weight": keep_last})


def test_prune_round_trip_matches_a_hand_masked_model():
    model, mask = tiny_model_and_mask()
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference[0].weight *= mask["0.weight"]
        reference[2].weight *= mask["2.weight"]
    x = torch.randn(5, 4)

    assert to_torch_prune(model, mask) is model
    for index, name in ((0, "0.weight"), (2, "2.weight")):
        assert isinstance(model[index].weight_orig, nn.Parameter)
        assert torch.equal(model[index].weight_mask, mask[name].float())
    assert torch.equal(model(x), reference(x))
    assert from_torch_prune(model) == mask

    # training through the reparametrisation keeps the pruned weights at zero
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model(x).sum().backward()
    optimizer.step()
    assert not model[0].weight[~mask["0.weight"]].any()

    make_permanent(model)
    assert not hasattr(model[0], "weight_orig") and not hasattr(model[0], "weight_mask")
    assert isinstance(model[0].weight, nn.Parameter)
    assert not model[2].weight[~mask["2.weight"]].any()
    with pytest.raises(ConfigError, match="no torch.nn.utils.prune masks"):
        from_torch_prune(model)


def test_prune_refuses_a_mask_that_does_not_fit_before_changing_anything():
    model, mask = tiny_model_and_mask()
    wrong = Mask({"0.weight": mask["0.weight"], "2.weight": torch.ones(2, 4, dtype=torch.bool)})
    with pytest.raises(ConfigError, match=r"'2.weight' has shape \(2, 4\)"):
        to_torch_prune(model, wrong)
    assert not hasattr(model[0], "weight_mask")  # the first entry was not applied either
    with pytest.raises(ConfigError, match="names no module"):
        to_torch_prune(model, Mask({"5.weight": torch.ones(1, dtype=torch.bool)}))
    with pytest.raises(ConfigError, match="not a parameter"):
        to_torch_prune(model, Mask({"0.bogus": torch.ones(1, dtype=torch.bool)}))


# ----------------------------------------------------------------------------- load_ticket

@pytest.fixture(scope="module")
def ticket_run(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("tickets") / "imp"
    find_tickets("imp", DATA, "mlp", out, train=TRAIN, imp=IMPConfig(rounds=2, rewind="5it"), dataset=digits)
    return out


def copy_run(ticket_run, tmp_path):
    copied = tmp_path / "run"
    shutil.copytree(ticket_run, copied)
    return copied


def edit_rows(run, change):
    summary = json.loads((run / "tickets.json").read_text())
    change(summary["tickets"])
    (run / "tickets.json").write_text(json.dumps(summary))


def test_load_ticket_gives_the_reported_accuracy_and_the_mask_zeros(ticket_run, digits):
    rows = json.loads((ticket_run / "tickets.json").read_text())["tickets"]
    _, test_loader = make_loaders(digits, TRAIN, torch.device("cpu"))
    for sparsity, row in ((None, rows[-1]), (0.21, rows[1]), (0.0, rows[0])):
        model = build_model("mlp", input_spec(digits), seed=99)
        ticket = load_ticket(model, ticket_run, sparsity)
        expected_mask = Mask.load(ticket_run / row["stage"] / "mask.pt")
        assert ticket.mask == expected_mask and ticket.stage == row["stage"] and ticket.sparsity == row["sparsity"]
        params = dict(model.named_parameters())
        zeros = sum(int((params[name] == 0).sum()) for name in expected_mask)
        assert zeros == expected_mask.num_weights - expected_mask.num_kept()
        assert evaluate(model, test_loader)["accuracy"] == row["test_accuracy"] == ticket.test_accuracy


def test_to_torch_prune_takes_the_loaded_ticket_itself(ticket_run, digits):
    """``to_torch_prune(model, load_ticket(...))``: the ticket's mask becomes weight_mask buffers, and anything
    else than a Mask or a LoadedTicket is one line, before the model changes."""
    from pracset.errors import ConfigError
    from pracset.interop import from_torch_prune, to_torch_prune

    model = build_model("mlp", input_spec(digits), seed=99)
    ticket = load_ticket(model, ticket_run)
    to_torch_prune(model, ticket)
    assert from_torch_prune(model) == ticket.mask
    fresh = build_model("mlp", input_spec(digits), seed=99)
    with pytest.raises(ConfigError, match="^to_torch_prune takes a Mask or the LoadedTicket of load_ticket, got dict$"):
        to_torch_prune(fresh, {"net.1.weight": torch.ones(3, dtype=torch.bool)})
    assert not any(name.endswith("_mask") for name, _ in fresh.named_buffers())


def test_load_ticket_refuses_a_model_of_another_shape_in_one_line(ticket_run, digits):
    model = build_model("lenet300", input_spec(digits), seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError) as caught:
        load_ticket(model, ticket_run)
    assert "net.1.weight is (300, 64) in the model, (256, 64) in the ticket" in one_line(caught)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="sparsity must be a number from 0 to 1"):
        load_ticket(model, ticket_run, 1.5)
    with pytest.raises(ConfigError, match="not a ticket run directory"):
        load_ticket(model, ticket_run / "missing")


def test_load_ticket_reads_per_row_paths_and_refuses_rows_without_weights(ticket_run, tmp_path, digits):
    run = copy_run(ticket_run, tmp_path)

    def older_rows_without_paths(rows):  # tickets.json before rows named their files: the layout's names
        for row in rows:
            row.pop("mask", None), row.pop("weights", None)
    edit_rows(run, older_rows_without_paths)
    model = build_model("mlp", input_spec(digits))
    assert load_ticket(model, run, 0.2).mask == Mask.load(run / "round-01" / "mask.pt")
    trained = torch.load(run / "round-01" / "model.pt", weights_only=True)
    assert all(torch.equal(value, trained[name]) for name, value in model.state_dict().items())

    def final_row_points_at_round_one(rows):
        rows[-1].update(mask="round-01/mask.pt", weights="round-01/model.pt")
    edit_rows(run, final_row_points_at_round_one)
    ticket = load_ticket(build_model("mlp", input_spec(digits)), run)
    assert ticket.mask == Mask.load(run / "round-01" / "mask.pt")

    def dense_weights_with_the_final_mask(rows):  # weights with no zeros: the mask must make them
        rows[-1].update(mask="round-02/mask.pt", weights="round-00/model.pt")
    edit_rows(run, dense_weights_with_the_final_mask)
    model = build_model("mlp", input_spec(digits))
    ticket = load_ticket(model, run)
    dense = torch.load(run / "round-00" / "model.pt", weights_only=True)
    for name, keep in Mask.load(run / "round-02" / "mask.pt").items():
        assert torch.equal(dict(model.named_parameters())[name].detach(), dense[name] * keep)
    assert ticket.mask == Mask.load(run / "round-02" / "mask.pt")

    def final_row_unevaluated(rows):
        rows[-1].update(weights=None)
    edit_rows(run, final_row_unevaluated)
    with pytest.raises(ConfigError) as caught:
        load_ticket(build_model("mlp", input_spec(digits)), run)
    assert "was not trained on the full split, so it has no weights" in one_line(caught)


def test_load_ticket_never_follows_a_path_or_link_out_of_the_run(ticket_run, tmp_path, digits):
    run = copy_run(ticket_run, tmp_path)
    outside = tmp_path / "outside.pt"
    shutil.copy(run / "round-02" / "model.pt", outside)
    (run / "round-02" / "model.pt").unlink()
    (run / "round-02" / "model.pt").symlink_to(outside)
    with pytest.raises(ConfigError) as caught:
        load_ticket(build_model("mlp", input_spec(digits)), run)
    assert "leads outside the run directory" in one_line(caught)

    def escape_by_path(rows):
        rows[-1].update(weights="../outside.pt")
    edit_rows(run, escape_by_path)
    with pytest.raises(ConfigError, match="leads outside the run directory"):
        load_ticket(build_model("mlp", input_spec(digits)), run)


# ----------------------------------------------------------------------------- Hugging Face folders

N = 120


@pytest.fixture(scope="module")
def hand_manifest(digits, tmp_path_factory):
    """A manifest of the first N digits keeping every third example (ids 0, 3, 6, ...), with hand-set metadata."""
    ids = np.arange(N)
    selected = ids % 3 == 0
    zeros = np.zeros(N)
    columns = {"example_id": ids, "content_hash": digits.train_hashes[:N], "label": digits.train.labels[:N].numpy(),
               "forgetting_events": zeros, "presentations": zeros + 2, "times_correct": zeros + 1,
               "first_learned_epoch": zeros, "never_learned": zeros.astype(bool), "last_correct": zeros.astype(bool),
               "last_loss": zeros, "margin": zeros, "cep_disagreements": zeros, "score": selected.astype(float),
               "selected": selected, "reason": np.where(selected, "cet", "")}
    metadata = {"dataset": {"name": "digits", "split": "train", "size": N, "fingerprint": "ab" * 16},
                "selection": {"rule": "cet", "fraction": 1 / 3},
                "provenance": {"arch": "lenet300", "seed": 7, "pracset_version": "9.9.9"}}
    return write_manifest(tmp_path_factory.mktemp("manifest") / "hand.parquet", columns, metadata)


def hf_digits(digits, order=None):
    import datasets

    order = np.arange(N) if order is None else order
    features = datasets.Features({"pixels": datasets.Array2D((8, 8), "uint8"), "label": datasets.Value("int64"),
                                  "row": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"pixels": digits.train.images[:N, 0].numpy()[order],
                                       "label": digits.train.labels[:N].numpy()[order], "row": order},
                                      features=features)


def test_save_hf_dataset_writes_the_selected_rows_and_a_card(digits, hand_manifest, tmp_path):
    import datasets

    kept = np.arange(0, N, 3)
    out = save_hf_dataset(hand_manifest, hf_digits(digits), tmp_path / "out", image_column="pixels")
    loaded = datasets.load_from_disk(str(out))
    assert loaded["row"] == kept.tolist()
    assert loaded["label"] == digits.train.labels[kept].tolist()
    text = (out / "README.md").read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert front["task_categories"] == ["image-classification"] and front["license"] == "unknown"
    assert front["size_categories"] == ["n<1K"]
    for fragment in ("selection rule: `cet`", "40 of 120 training examples (33.33%)", "`lenet300`", "seed `7`",
                     "`9.9.9`", "ab" * 16):
        assert fragment in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left beside it


def test_save_hf_dataset_on_a_shuffled_copy_with_an_id_column(digits, hand_manifest, tmp_path):
    import datasets

    order = np.random.default_rng(1).permutation(N)
    (tmp_path / "empty").mkdir()  # an empty directory is fine
    save_hf_dataset(read_manifest(hand_manifest), hf_digits(digits, order), tmp_path / "empty",
                    image_column="pixels", id_column="example_id", card=False)
    loaded = datasets.load_from_disk(str(tmp_path / "empty"))
    assert loaded["example_id"] == loaded["row"] == list(range(0, N, 3))
    assert not (tmp_path / "empty" / "README.md").exists()


def test_save_hf_dataset_refuses_a_non_empty_directory_and_leaves_nothing_on_failure(digits, hand_manifest,
                                                                                    tmp_path, monkeypatch):
    import datasets

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError) as caught:
        save_hf_dataset(hand_manifest, hf_digits(digits), tmp_path / "full", image_column="pixels")
    assert "exists and is not an empty directory" in one_line(caught)
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    with pytest.raises(ConfigError, match="exists and is not an empty directory"):  # refused before any work
        save_hf_dataset(hand_manifest, "not even a dataset", tmp_path / "full")

    def disk_full(self, path, **kwargs):
        (Path(path) / "part").write_text("half")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(datasets.Dataset, "save_to_disk", disk_full)
    with pytest.raises(ConfigError, match="cannot write .*No space left on device"):
        save_hf_dataset(hand_manifest, hf_digits(digits), tmp_path / "new", image_column="pixels")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


def test_push_to_hub_is_one_line_offline_and_merges_the_card(digits, hand_manifest, tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    out = save_hf_dataset(hand_manifest, hf_digits(digits), tmp_path / "out", image_column="pixels")

    def offline(self, repo_id, **kwargs):
        raise ConnectionError("Name or service not known\nmore")
    monkeypatch.setattr(datasets.Dataset, "push_to_hub", offline)
    with pytest.raises(ConfigError) as caught:
        push_to_hub(out, "someone/digits-cet")
    assert "could not push" in one_line(caught) and "Name or service not known" in str(caught.value)

    pushed = {}
    monkeypatch.setattr(datasets.Dataset, "push_to_hub",
                        lambda self, repo_id, **kw: pushed.update(rows=len(self), **kw))
    monkeypatch.setattr(huggingface_hub.DatasetCard, "load", classmethod(
        lambda cls, repo_id, **kw: cls("---\nconfigs:\n- config_name: default\n---\nwritten by datasets\n")))
    monkeypatch.setattr(huggingface_hub.DatasetCard, "push_to_hub",
                        lambda self, repo_id, **kw: pushed.update(card=self.content))
    push_to_hub(out, "someone/digits-cet")
    front = yaml.safe_load(pushed["card"].split("---")[1])
    assert pushed["rows"] == 40 and pushed["private"] is True
    assert front["configs"] == [{"config_name": "default"}] and front["task_categories"] == ["image-classification"]
    assert "selection rule: `cet`" in pushed["card"] and "written by datasets" not in pushed["card"]


def test_dataset_card_names_a_known_license(hand_manifest):
    text = dataset_card(read_manifest(hand_manifest), source_license="CC BY 4.0")
    assert yaml.safe_load(text.split("---")[1])["license"] == "other" and "CC BY 4.0" in text


# ----------------------------------------------------------------------------- pretrained torchvision weights

def fake_pretrained(monkeypatch, arch: str) -> dict:
    """Make ``arch``'s weights "download" (and pass the hash check with) a state dict of a fresh 1000-class
    model (seed 123); returns it. The hash check itself: tests/test_hostile_weights_and_paths.py."""
    import torchvision

    import pracset.models

    torch.manual_seed(123)
    state = torchvision.models.get_model(arch, weights=None, num_classes=1000).state_dict()
    monkeypatch.setattr(pracset.models, "_verified_state_dict", lambda name, weights: dict(state))
    return state


@pytest.mark.parametrize("arch, head", [("resnet18", "fc"), ("mobilenet_v3_small", "classifier.3")])
@pytest.mark.parametrize("channels", [3, 1])
def test_pretrained_backbone_with_a_fresh_head(monkeypatch, arch, head, channels):
    import torchvision

    pretrained = fake_pretrained(monkeypatch, arch)
    model = build_model(f"torchvision/{arch}", InputSpec(channels, 32, 32, 10), seed=0, weights="DEFAULT")
    state = (model.model if channels == 1 else model).state_dict()
    torch.manual_seed(0)
    fresh_head = torchvision.models.get_model(arch, weights=None, num_classes=10).get_submodule(head)
    assert state.keys() == pretrained.keys()
    for name, value in state.items():
        if name.startswith(f"{head}."):
            assert torch.equal(value, fresh_head.state_dict()[name.removeprefix(f"{head}.")])
        else:
            assert torch.equal(value, pretrained[name]), name
    assert model(torch.zeros(2, channels, 32, 32)).shape == (2, 10)


def test_pretrained_head_is_kept_when_the_class_count_matches(monkeypatch):
    pretrained = fake_pretrained(monkeypatch, "resnet18")
    model = build_model("torchvision/resnet18", InputSpec(3, 32, 32, 1000), weights="IMAGENET1K_V1")
    assert all(torch.equal(v, pretrained[k]) for k, v in model.state_dict().items())


def test_pretrained_weight_names_and_errors(monkeypatch, tmp_path):
    spec = InputSpec(3, 32, 32, 10)
    with pytest.raises(ConfigError) as caught:
        build_model("torchvision/resnet18", spec, weights="IMAGENET1K_V9")
    assert one_line(caught) == "unknown weights 'IMAGENET1K_V9' for torchvision/resnet18; valid: IMAGENET1K_V1, DEFAULT"
    with pytest.raises(ConfigError, match="exist only for torchvision/NAME models, not for mlp"):
        build_model("mlp", spec, weights="DEFAULT")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)  # an empty cache: the file must be fetched
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ConfigError) as caught:
        build_model("torchvision/resnet18", spec, weights="ResNet18_Weights.IMAGENET1K_V1")
    message = one_line(caught)
    assert "could not be downloaded" in message and torch.hub.get_dir() in message
    assert "resnet18-f37072fd.pth" in message
