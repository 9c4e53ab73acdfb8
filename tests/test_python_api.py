"""Your own model and data from Python: torch tensors / Datasets / DataLoaders, nn.Modules, and plug-ins."""

from __future__ import annotations

import hashlib
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import pracset
from pracset.data.base import ImageSplit, content_hashes
from pracset.data.torch_data import TorchBatches, from_torch, read_examples
from pracset.errors import ConfigError, DataError
from pracset.models.custom import resolve_architecture
from pracset.sparse import Mask, RigL, RigLConfig, SparseStepper
from pracset.stats import pruning_probe
from pracset.train import Callback, TrainConfig, Trainer

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_api_block() -> str:
    text = README.read_text()
    section = text[text.index("### Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_python_api_block(), "README.md (Python API)", "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out
    assert re.search(r"PrAC set: \d+ of 600 examples", printed)
    assert "top-25% by forgetting: 150 examples" in printed  # round(0.25 * 600)
    assert re.search(r"ticket at sparsity 0\.36", printed)     # two rounds of 20%: 1 - 0.8**2
    assert re.search(r"sparsity 0\.80\n", printed)
    assert (tmp_path / "blobs-prac.parquet").exists() and (tmp_path / "blobs-tickets" / "tickets.json").exists()


# ----------------------------------------------------------------------------- reading torch data
def _numbered(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs whose value is their example id, labels id % 3: a row in the wrong place shows."""
    x = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 4)
    return x, torch.arange(n) % 3


class _Items(Dataset):
    def __init__(self, n: int, with_index: bool):
        self.x, self.y = _numbered(n)
        self.with_index = with_index

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return (self.x[i], self.y[i], i) if self.with_index else (self.x[i], self.y[i])


def test_a_shuffling_loader_with_ids_is_read_in_id_order():
    loader = DataLoader(_Items(23, with_index=True), batch_size=5, shuffle=True,
                        generator=torch.Generator().manual_seed(3))
    x, y = read_examples(loader, "train")
    assert torch.equal(x[:, 0], torch.arange(23, dtype=torch.float32))
    assert torch.equal(y, torch.arange(23) % 3)


def test_a_shuffling_loader_without_ids_is_refused():
    with pytest.raises(DataError, match="cannot tell which example"):
        read_examples(DataLoader(_Items(10, with_index=False), batch_size=4, shuffle=True), "train")


def test_datasets_and_ordered_loaders_number_rows_in_order():
    for data in (_Items(11, False), DataLoader(_Items(11, False), batch_size=4), TensorDataset(*_numbered(11)),
                 _numbered(11)):
        x, y = read_examples(data, "train")
        assert torch.equal(x[:, 0], torch.arange(11, dtype=torch.float32)), type(data).__name__


def test_ids_that_are_not_a_permutation_are_refused():
    class Twice(_Items):
        def __getitem__(self, i):
            return self.x[i], self.y[i], i // 2

    with pytest.raises(DataError, match="each once"):
        read_examples(DataLoader(Twice(6, True), batch_size=3), "train")


def test_an_iterable_dataset_of_pairs_is_numbered_in_the_order_read():
    class Stream(IterableDataset):
        def __iter__(self):
            x, y = _numbered(7)
            return iter(zip(x, y))

    x, _ = read_examples(DataLoader(Stream(), batch_size=3), "train")
    assert torch.equal(x[:, 0], torch.arange(7, dtype=torch.float32))


def test_float_inputs_hash_their_bytes_and_never_like_pixels():
    x = torch.tensor([[0.5, -1.0, 2.0]])
    expected = hashlib.blake2b(struct.pack("<q", 2) + b"f32" + struct.pack("<I", 3), digest_size=8)
    expected.update(np.array([0.5, -1.0, 2.0], dtype="<f4").tobytes())
    assert content_hashes(x, torch.tensor([2]))[0] == expected.hexdigest()
    pixels = torch.zeros(1, 1, 1, 3, dtype=torch.uint8)
    assert content_hashes(pixels, torch.tensor([2]))[0] != content_hashes(pixels[:, 0, 0].float(), torch.tensor([2]))[0]


def test_float_inputs_are_used_as_given_by_the_loader():
    data = from_torch(_numbered(8), _numbered(4))
    assert data.normalization == ((0.0,), (1.0,))
    loader = pracset.data.DeviceLoader(data.train, 8, *data.normalization)
    batch = next(iter(loader))
    assert torch.equal(batch.x, data.train.images)
    with pytest.raises(ConfigError, match="need \\(N, C, H, W\\) images"):
        pracset.data.DeviceLoader(data.train, 8, *data.normalization, crop_padding=2)


def test_split_dtype_is_checked():
    with pytest.raises(DataError, match="uint8 \\(N, C, H, W\\) or a float32"):
        ImageSplit(torch.zeros(3, 4, dtype=torch.float64), torch.zeros(3, dtype=torch.int64))


# ----------------------------------------------------------------------------- the Trainer on a user's DataLoader
class _LabelsById(Callback):
    def __init__(self, labels: torch.Tensor):
        self.labels, self.checked = labels, 0

    def on_batch_end(self, state, out):
        assert torch.equal(out.labels, self.labels[out.index])
        self.checked += len(out.index)


def test_the_trainer_gives_callbacks_the_ids_of_a_shuffled_pair_loader():
    x, y = _numbered(30)
    y = (torch.arange(30) * 7) % 5  # labels that differ between neighbours
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    assert isinstance(TorchBatches(loader, "cpu").loader.dataset, Dataset)
    check = _LabelsById(y)
    state = Trainer(TrainConfig(epochs=2, batch_size=8, warmup_epochs=0)).fit(
        nn.Sequential(nn.Linear(4, 5)), loader, DataLoader(TensorDataset(x, y), batch_size=10), [check])
    assert check.checked == 60 and state.step == 2 * 4
    assert state.history[-1]["test_accuracy"] is not None


def test_the_probe_reads_a_dataloader():
    torch.manual_seed(0)
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    result = pruning_probe(model, DataLoader(TensorDataset(x, y), batch_size=16), [0.5], num_examples=40)
    # reference: prune half of the weights of smallest magnitude over both layers, compare predictions
    weights = torch.cat([model[0].weight.flatten(), model[2].weight.flatten()]).abs()
    threshold = weights.sort().values[len(weights) // 2 - 1]
    pruned = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    pruned.load_state_dict(model.state_dict())
    with torch.no_grad():
        for layer in (pruned[0], pruned[2]):
            layer.weight[layer.weight.abs() <= threshold] = 0
        expected = (model(x).argmax(1) != pruned(x).argmax(1)).int().numpy()
    assert np.array_equal(result.disagreements, expected)


# ----------------------------------------------------------------------------- architectures
class _Net(nn.Module):
    def __init__(self, outputs: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, outputs))

    def forward(self, x):
        return self.body(x)


def _weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_a_module_is_a_template_reinitialised_per_seed():
    template = _Net()
    before = _weights(template).clone()
    arch = resolve_architecture(template)
    spec = pracset.models.InputSpec(1, 1, 4, 3)
    a, b, c = arch.make(spec, 1), arch.make(spec, 1), arch.make(spec, 2)
    assert torch.equal(_weights(a), _weights(b)) and not torch.equal(_weights(a), _weights(c))
    assert torch.equal(_weights(template), before) and not torch.equal(_weights(a), before)
    assert arch.name == resolve_architecture(_Net()).name != resolve_architecture(_Net(outputs=4)).name
    assert arch.name.startswith("python:test_python_api._Net:")


def test_a_function_is_called_under_the_seed():
    arch = resolve_architecture(_Net)
    spec = pracset.models.InputSpec(1, 1, 4, 3)
    torch.manual_seed(1)
    expected = _weights(_Net())
    assert torch.equal(_weights(arch.make(spec, 1)), expected)
    with pytest.raises(ConfigError, match="not an nn.Module"):
        resolve_architecture(lambda: 3)


def test_a_model_that_does_not_fit_the_data_is_refused_before_anything_is_written(tmp_path):
    data = from_torch(_numbered(20), _numbered(10))
    with pytest.raises(ConfigError, match="returns \\(4,\\) outputs per example, expected 3 class scores"):
        pracset.find_tickets("imp", data, _Net(outputs=4), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="does not take inputs of shape \\(4,\\)"):
        pracset.build_manifest(data, nn.Linear(5, 3), tmp_path / "m.parquet")
    assert list(tmp_path.iterdir()) == []


def test_another_python_model_is_refused_in_the_same_run_directory(tmp_path):
    data = from_torch(_numbered(30), _numbered(10))
    recipe = TrainConfig(epochs=1, batch_size=10, warmup_epochs=0)
    pracset.train_dense(data, _Net(), recipe, tmp_path / "run", device=torch.device("cpu"))
    again = pracset.train_dense(data, _Net(), recipe, tmp_path / "run", device=torch.device("cpu"))
    assert again.skipped
    with pytest.raises(ConfigError, match="changed arch: \"python:test_python_api._Net:"):
        pracset.train_dense(data, _Net(outputs=5), recipe, tmp_path / "run", device=torch.device("cpu"))


# ----------------------------------------------------------------------------- the sparse plug-in
def _sgd_steps(model, optimizer, stepper, steps: int, x, y) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        stepper.step()


def test_a_fixed_mask_stays_applied_with_momentum():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2))
    keep = torch.tensor([[True, False, True], [False, True, False]])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    stepper = SparseStepper(model, optimizer, Mask({"0.weight": keep}), total_steps=5)
    assert torch.equal(model[0].weight == 0, ~keep)  # masked at once
    _sgd_steps(model, optimizer, stepper, 5, torch.randn(8, 3), torch.randint(0, 2, (8,)))
    assert torch.equal(model[0].weight == 0, ~keep) and stepper.steps == 5
    assert torch.equal(optimizer.state[model[0].weight]["momentum_buffer"] == 0, ~keep)


def test_rigl_changes_the_mask_on_its_schedule_and_keeps_the_count():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    config = RigLConfig(sparsity=0.75, delta_t=3, dense_first=False, distribution="uniform")
    stepper = SparseStepper(model, optimizer, RigL(config), total_steps=12)
    x, y = torch.randn(16, 10), torch.randint(0, 4, (16,))
    _sgd_steps(model, optimizer, stepper, 1, x, y)  # step 0 updates (RigL: steps that are multiples of delta_t)
    start = {n: t.clone() for n, t in stepper.mask.items()}
    _sgd_steps(model, optimizer, stepper, 2, x, y)  # steps 1, 2: no update
    assert all(torch.equal(stepper.mask[n], start[n]) for n in start)
    _sgd_steps(model, optimizer, stepper, 1, x, y)  # step 3 updates
    assert any(not torch.equal(stepper.mask[n], start[n]) for n in start)
    for name, keep in stepper.mask.items():
        assert int(keep.sum()) == round(0.25 * keep.numel())  # uniform: every layer keeps exactly its count
        assert bool((dict(model.named_parameters())[name][~keep] == 0).all())


def test_the_stepper_refuses_a_bad_step_count():
    with pytest.raises(ConfigError, match="total_steps must be a positive integer"):
        SparseStepper(nn.Linear(2, 2), torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1),
                      Mask({"weight": torch.ones(2, 2, dtype=torch.bool)}), total_steps=0)


def test_pretrained_weights_start_the_run_but_not_the_reinitialisation_control(monkeypatch):
    import torchvision

    torch.manual_seed(123)
    pretrained = torchvision.models.get_model("resnet18", weights=None, num_classes=1000).state_dict()
    # the verified, weights_only file "holds" these tensors (the check itself: test_hostile_weights_and_paths.py)
    monkeypatch.setattr(pracset.models, "_verified_state_dict", lambda name, weights: dict(pretrained))
    arch = resolve_architecture("torchvision/resnet18", "DEFAULT")
    assert arch.name == "torchvision/resnet18 (pretrained DEFAULT)"
    spec = pracset.models.InputSpec(3, 32, 32, 10)
    started = arch.build(spec, seed=0).state_dict()
    random = arch.build(spec, seed=1, pretrained=False).state_dict()
    assert torch.equal(started["conv1.weight"], pretrained["conv1.weight"])
    assert not torch.equal(random["conv1.weight"], pretrained["conv1.weight"])
    with pytest.raises(ConfigError, match="mlp has none"):
        resolve_architecture("mlp", "DEFAULT")
    with pytest.raises(ConfigError, match="load your own model's weights"):
        resolve_architecture(_Net(), "DEFAULT")


def test_the_reinitialisation_control_redraws_a_python_model_whose_function_loads_weights():
    saved = _Net().state_dict()

    def pretrained():
        model = _Net()
        model.load_state_dict(saved)
        return model

    arch = resolve_architecture(pretrained)
    spec = pracset.models.InputSpec(1, 1, 4, 3)
    ticket = arch.build(spec, seed=0)
    assert torch.equal(_weights(ticket), torch.cat([t.flatten() for t in saved.values()]))
    control = arch.build(spec, seed=1000, pretrained=False)
    torch.manual_seed(1000)
    assert torch.equal(_weights(control), _weights(_Net()))  # what reset_parameters() draws under that seed


def test_python_architectures_that_cannot_be_redrawn_are_refused():
    shared = _Net()
    with pytest.raises(ConfigError, match="returns the same model object every call"):
        resolve_architecture(lambda: shared)

    class Scaled(_Net):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))

    with pytest.raises(ConfigError, match=r"Scaled.scale belongs to no submodule with reset_parameters\(\)"):
        resolve_architecture(Scaled()).make(pracset.models.InputSpec(1, 1, 4, 3), 0)


def test_a_python_model_s_name_changes_with_its_layer_settings():
    def net(p: float):
        return nn.Sequential(nn.Linear(4, 8), nn.Dropout(p), nn.ReLU(), nn.Linear(8, 3))

    assert resolve_architecture(net(0.5)).name != resolve_architecture(net(0.0)).name
    before = torch.random.get_rng_state()
    resolve_architecture(_Net)
    assert torch.equal(torch.random.get_rng_state(), before)  # naming a function does not move the seed


def test_reading_refuses_a_loader_that_drops_examples_and_transposes_channels_last_pixels():
    with pytest.raises(DataError, match="drops its last incomplete batch"):
        read_examples(DataLoader(_Items(10, False), batch_size=4, drop_last=True), "train")
    hwc = torch.arange(2 * 5 * 6 * 3, dtype=torch.int64).remainder(256).to(torch.uint8).view(2, 5, 6, 3)
    x, _ = read_examples((hwc, torch.tensor([0, 1])), "train")  # torchvision's CIFAR10.data layout
    assert x.shape == (2, 3, 5, 6) and torch.equal(x[1, 2], hwc[1, :, :, 2])


def test_a_loader_s_own_collate_function_still_collates_its_pairs():
    def collate(items):  # written for (x, y) pairs, as users write them
        xs, ys = zip(*items)
        return torch.stack(xs) * 2, torch.stack(ys)

    x, y = _numbered(12)
    loader = DataLoader(TensorDataset(x, y), batch_size=5, shuffle=True, collate_fn=collate)
    batches = list(TorchBatches(loader, "cpu"))
    for batch in batches:
        assert torch.equal(batch.x[:, 0], 2 * batch.index.float())  # the ids belong to the rows collated
    assert sorted(torch.cat([b.index for b in batches]).tolist()) == list(range(12))


def test_an_iterable_loader_without_a_length_is_one_line():
    class Stream(IterableDataset):
        def __iter__(self):
            return iter(zip(*_numbered(4)))

    with pytest.raises(DataError, match="has no length"):
        TorchBatches(DataLoader(Stream(), batch_size=2), "cpu")
