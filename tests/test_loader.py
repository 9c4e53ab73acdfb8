import torch
import pytest

from pracset.data import DeviceLoader, ImageSplit
from pracset.data.loader import random_crop, random_flip
from pracset.errors import ConfigError


def make_split(n=10, c=1, h=4, w=4):
    images = torch.arange(n * c * h * w, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, c, h, w)
    # make each image identifiable: first pixel = its id
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return ImageSplit(images, torch.arange(n, dtype=torch.int64) % 3)


def test_unshuffled_batches_cover_ids_in_order_with_normalisation():
    split = make_split()
    loader = DeviceLoader(split, 4, mean=[0.5], std=[0.25])
    batches = list(loader)
    assert [len(b.index) for b in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([b.index for b in batches]), torch.arange(10))
    x = torch.cat([b.x for b in batches])
    expected = (split.images.float() / 255 - 0.5) / 0.25
    assert torch.allclose(x, expected, atol=1e-6)
    assert torch.equal(torch.cat([b.y for b in batches]), split.labels)


def test_subset_restricts_ids_without_copying_the_data():
    split = make_split()
    loader = DeviceLoader(split, 3, [0.0], [1.0], ids=[7, 2, 5, 9], shuffle=True, seed=1)
    assert loader.split.images.untyped_storage().data_ptr() == split.images.untyped_storage().data_ptr()
    seen = torch.cat([b.index for b in loader])
    assert sorted(seen.tolist()) == [2, 5, 7, 9]
    for batch in loader:  # each row really is the example its index names
        assert torch.equal((batch.x[:, 0, 0, 0] * 255).round().long(), batch.index)
    assert len(loader) == 2 and loader.num_examples == 4


def test_shuffle_is_seeded_per_epoch_and_reproducible():
    split = make_split(50)
    a = DeviceLoader(split, 8, [0.0], [1.0], shuffle=True, seed=3)
    b = DeviceLoader(split, 8, [0.0], [1.0], shuffle=True, seed=3)
    order = lambda loader: torch.cat([x.index for x in loader])
    first = order(a)
    assert torch.equal(first, order(b))
    assert sorted(first.tolist()) == list(range(50)) and not torch.equal(first, torch.arange(50))
    a.set_epoch(1)
    second = order(a)
    assert not torch.equal(first, second)
    b.set_epoch(1)
    assert torch.equal(second, order(b))
    c = DeviceLoader(split, 8, [0.0], [1.0], shuffle=True, seed=4)
    assert not torch.equal(first, order(c))


def test_drop_last():
    loader = DeviceLoader(make_split(10), 4, [0.0], [1.0], drop_last=True)
    assert len(loader) == 2
    assert sum(len(b.index) for b in loader) == 8


def test_random_crop_is_a_shifted_window_of_the_zero_padded_image():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 6, 5), dtype=torch.uint8, generator=gen)
    out = random_crop(images, 2, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    shifts = set()
    for i in range(len(images)):
        matches = [(dy, dx) for dy in range(5) for dx in range(5)
                   if torch.equal(padded[i, :, dy:dy + 6, dx:dx + 5], out[i])]
        assert matches, f"crop {i} is not a window of its padded image"
        shifts.add(matches[0])
    assert len(shifts) > 10  # offsets really vary across the batch


def test_random_flip_flips_about_half_and_nothing_else():
    images = torch.randint(0, 256, (400, 1, 3, 4), dtype=torch.uint8)
    out = random_flip(images, torch.Generator().manual_seed(0))
    same = (out == images).flatten(1).all(1)
    flipped = (out == images.flip(3)).flatten(1).all(1)
    assert bool((same | flipped).all())
    assert 150 < int(flipped.sum()) < 250


def test_augmented_epochs_are_reproducible():
    split = ImageSplit(torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8), torch.zeros(20, dtype=torch.int64))
    make = lambda: DeviceLoader(split, 6, [0.5] * 3, [0.5] * 3, shuffle=True, crop_padding=2, flip=True, seed=5)
    x1 = torch.cat([b.x for b in make()])
    x2 = torch.cat([b.x for b in make()])
    assert x1.shape == (20, 3, 8, 8)
    assert torch.equal(x1, x2)


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size"),
    ({"ids": [0, 10]}, "example ids must lie in"),
    ({"ids": []}, "non-empty"),
    ({"mean": [0.1, 0.2]}, "mean/std"),
])
def test_bad_arguments_are_config_errors(kwargs, message):
    args = {"batch_size": 4, "mean": [0.0], "std": [1.0], **kwargs}
    with pytest.raises(ConfigError, match=message):
        DeviceLoader(make_split(), args.pop("batch_size"), args.pop("mean"), args.pop("std"), **args)
