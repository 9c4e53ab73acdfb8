"""The model registry: ``build_model(name, spec)``; ``pracset models`` lists the names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from pracset.errors import ConfigError, UnknownNameError
from pracset.models.zoo import (MLP, VGG, VGG_PLANS, BasicBlock, Bottleneck, ChannelAdapter,
                                ConvNet, InputSpec, LeNet5, ResNet, init_weights)
from pracset.registry import Registry

TORCHVISION_PREFIX = "torchvision/"


@dataclass(frozen=True)
class ModelEntry:
    """A registered architecture: its builder, a description and the smallest image it accepts."""

    build: Callable[[InputSpec], nn.Module]
    description: str
    min_size: int = 1


def _resnet_cifar(depth: int) -> ModelEntry:
    n = (depth - 2) // 6
    return ModelEntry(lambda s: ResNet(s, BasicBlock, (n, n, n), (16, 32, 64), imagenet_stem=False),
                      f"ResNet-{depth} for CIFAR (He et al.: 3 stages of {n} basic blocks, 16/32/64 channels)")


MODELS: Registry[ModelEntry] = Registry("model", {
    "mlp": ModelEntry(lambda s: MLP(s, (256, 128)), "fully connected 256-128 ReLU network"),
    "lenet300": ModelEntry(lambda s: MLP(s, (300, 100)), "LeNet-300-100 (fully connected 300-100)"),
    "lenet5": ModelEntry(LeNet5, "LeNet-5 (two 5x5 convs, fc 120-84)", min_size=12),
    "conv2": ModelEntry(lambda s: ConvNet(s, (64,)), "Conv-2 of the lottery ticket paper", min_size=2),
    "conv4": ModelEntry(lambda s: ConvNet(s, (64, 128)), "Conv-4 of the lottery ticket paper", min_size=4),
    "conv6": ModelEntry(lambda s: ConvNet(s, (64, 128, 256)), "Conv-6 of the lottery ticket paper", min_size=8),
    **{name: ModelEntry(lambda s, p=plan: VGG(s, p), f"{name.upper()} with BatchNorm, CIFAR-style", min_size=16)
       for name, plan in VGG_PLANS.items()},
    "resnet20": _resnet_cifar(20),
    "resnet32": _resnet_cifar(32),
    "resnet56": _resnet_cifar(56),
    "resnet18": ModelEntry(lambda s: ResNet(s, BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), False),
                           "ResNet-18 with a CIFAR stem (3x3 conv, no max-pool)", min_size=8),
    "resnet18-imagenet": ModelEntry(lambda s: ResNet(s, BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), True),
                                    "ResNet-18 with the ImageNet stem (7x7/2 conv + max-pool)", min_size=32),
    "resnet50": ModelEntry(lambda s: ResNet(s, Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), False),
                           "ResNet-50 with a CIFAR stem", min_size=8),
    "resnet50-imagenet": ModelEntry(lambda s: ResNet(s, Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), True),
                                    "ResNet-50 with the ImageNet stem", min_size=32),
})


def torchvision_names() -> list[str]:
    """The torchvision classification models, usable as ``torchvision/NAME``."""
    import torchvision  # here: only torchvision/NAME models need it, and it is slow to import

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _build_torchvision(name: str, spec: InputSpec) -> nn.Module:
    import torchvision  # see torchvision_names

    valid = torchvision_names()
    if name not in valid:
        raise UnknownNameError(f"unknown torchvision model {name!r}; valid names: {', '.join(valid)}")
    if spec.channels not in (1, 3):
        raise ConfigError(f"torchvision/{name} takes 1- or 3-channel images, the data has {spec.channels}")
    model = torchvision.models.get_model(name, weights=None, num_classes=spec.num_classes)
    return ChannelAdapter(model) if spec.channels == 1 else model


def check_model_name(name: str) -> None:
    """Fail early on an unknown architecture name (the error lists the valid ones)."""
    if name.startswith(TORCHVISION_PREFIX):
        bare = name[len(TORCHVISION_PREFIX):]
        if bare not in torchvision_names():
            raise UnknownNameError(f"unknown torchvision model {bare!r}; valid names: {', '.join(torchvision_names())}")
    else:
        MODELS.get(name)


def build_model(name: str, spec: InputSpec, seed: int | None = None) -> nn.Module:
    """Build architecture ``name`` sized for ``spec``, seeded when ``seed`` is given.

    A torchvision classification model is reached as ``torchvision/NAME``. The
    model is checked with one forward pass on a dummy batch, so that an
    architecture that does not fit the data fails here with a clear message.
    """
    if seed is not None:
        torch.manual_seed(seed)
    if name.startswith(TORCHVISION_PREFIX):
        model = _build_torchvision(name[len(TORCHVISION_PREFIX):], spec)
    else:
        entry = MODELS.get(name)
        if min(spec.height, spec.width) < entry.min_size:
            raise ConfigError(f"model {name} needs images of at least {entry.min_size}x{entry.min_size}, "
                              f"the data has {spec.height}x{spec.width}")
        model = init_weights(entry.build(spec))
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, spec.channels, spec.height, spec.width))
    except RuntimeError as exc:
        raise ConfigError(f"model {name} does not fit {spec.channels}x{spec.height}x{spec.width} images: "
                          f"{str(exc).splitlines()[0]}") from None
    if out.shape != (2, spec.num_classes):
        raise ConfigError(f"model {name} returns {tuple(out.shape[1:])} outputs, expected {spec.num_classes}")
    return model.train()


def has_convolutions(model: nn.Module) -> bool:
    """Whether ``model`` has a convolution (conv nets train in channels-last memory on CUDA)."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


__all__ = ["MODELS", "check_model_name", "InputSpec", "ModelEntry", "build_model", "has_convolutions", "torchvision_names"]
