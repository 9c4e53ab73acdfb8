"""The model registry: ``build_model(name, spec)``; ``pracset models`` lists the names."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse

import torch
import torch.nn as nn

from pracset.errors import ConfigError, UnknownNameError
from pracset.fileio import require_regular_file
from pracset.models.zoo import (MLP, VGG, VGG_PLANS, BasicBlock, Bottleneck, ChannelAdapter,
                                ConvNet, InputSpec, LeNet5, ResNet, init_weights)
from pracset.registry import Registry

log = logging.getLogger(__name__)

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


def _build_torchvision(name: str, spec: InputSpec, weights: str | None = None) -> nn.Module:
    import torchvision  # see torchvision_names

    valid = torchvision_names()
    if name not in valid:
        raise UnknownNameError(f"unknown torchvision model {name!r}; valid names: {', '.join(valid)}")
    if spec.channels not in (1, 3):
        raise ConfigError(f"torchvision/{name} takes 1- or 3-channel images, the data has {spec.channels}")
    if weights is None:
        model = torchvision.models.get_model(name, weights=None, num_classes=spec.num_classes)
    else:
        model = _pretrained_torchvision(name, pretrained_weights(name, weights), spec.num_classes)
    return ChannelAdapter(model) if spec.channels == 1 else model


def pretrained_weights(name: str, weights: str):
    """The torchvision weights enum member ``weights`` (``"IMAGENET1K_V1"``, ``"DEFAULT"``, ...) of model ``name``.

    ``ResNet18_Weights.IMAGENET1K_V1`` (the enum's own spelling) is accepted
    too; an unknown name raises a one-line :class:`ConfigError` listing the
    valid ones.
    """
    import torchvision  # see torchvision_names

    if not isinstance(weights, str):
        raise ConfigError(f"weights must be the name of a torchvision weights entry, got {type(weights).__name__}")
    enum = torchvision.models.get_model_weights(name)
    member = weights.removeprefix(f"{enum.__name__}.")
    if member not in enum.__members__:
        raise ConfigError(f"unknown weights {weights!r} for torchvision/{name}; valid: {', '.join(enum.__members__)}")
    return enum[member]


def _pretrained_torchvision(name: str, weights, num_classes: int) -> nn.Module:
    """Model ``name`` with ``weights`` loaded; a classifier head of another size is replaced by a fresh one.

    The fresh head is the one torchvision initialises for ``num_classes``
    (built first, so the model's seed decides it): every module whose
    parameter shapes depend on the class count (the final classifier, and
    the auxiliary classifiers of GoogLeNet / Inception when kept) is taken
    from that fresh model, everything else keeps the pretrained values.
    """
    import torchvision  # see torchvision_names

    pretrained_classes = len(weights.meta.get("categories") or ()) or None
    fresh = (torchvision.models.get_model(name, weights=None, num_classes=num_classes)
             if pretrained_classes != num_classes else None)
    state = _verified_state_dict(name, weights)
    try:
        with _serving_state_dict(name, weights, state) as asked:
            model = torchvision.models.get_model(name, weights=weights, progress=False)
    except ConfigError:
        raise
    # load_state_dict: the file holds other tensors (or other values) than the model's
    except (RuntimeError, TypeError, KeyError, AttributeError, ValueError) as exc:
        raise ConfigError(f"the pretrained weights {weights} of torchvision/{name} do not fit the model "
                          f"({_first_line(exc)})") from None
    if not asked:  # fail closed: a model with random weights must never pass for a pretrained one
        raise ConfigError(f"torchvision/{name} did not load its weights through WeightsEnum.get_state_dict; this "
                          "torchvision version builds it in a way pracset cannot check, so --weights is refused")
    if fresh is not None:
        fresh_shapes = {n: p.shape for n, p in fresh.named_parameters()}
        heads = dict.fromkeys(n.rpartition(".")[0] for n, p in model.named_parameters()
                              if n in fresh_shapes and fresh_shapes[n] != p.shape)
        for head in heads:
            parent, _, child = head.rpartition(".")
            setattr(model.get_submodule(parent), child, fresh.get_submodule(head))
        log.info("torchvision/%s: pretrained %s, %s replaced by a fresh %d-class head", name, weights,
                 ", ".join(heads), num_classes)
    return model


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _weights_file(weights) -> tuple[Path, str]:
    """Where torch's hub cache keeps ``weights`` (``torch.hub.get_dir()/checkpoints/<file name of its url>``),
    and the published sha256 prefix that file must have: torchvision names its files ``NAME-<first 8+ hex
    digits of the sha256>.pth`` (``torch.hub.HASH_REGEX``). Weights whose name carries no such hash are
    refused: pracset loads only pretrained weights it can verify."""
    file_name = os.path.basename(urlparse(weights.url).path)
    match = torch.hub.HASH_REGEX.search(file_name)
    if match is None or len(match.group(1)) < 8:
        raise ConfigError(f"the pretrained weights {weights} ({weights.url}) publish no sha256 in their file name; "
                          "pracset loads only pretrained weights whose hash it can check")
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name, match.group(1)


def _verified_state_dict(name: str, weights) -> dict:
    """The state dict of ``weights``, read only after the file's sha256 matched the published one.

    torchvision's own loading (``load_state_dict_from_url``) reads a file
    already in the hub cache with ``weights_only=False`` and without its hash
    check, so a file planted there under the expected name would run code.
    Here an absent file is downloaded by ``torch.hub.download_url_to_file``
    with the hash prefix (it refuses a mismatch before the file is in place);
    a present one is hashed first, and refused on a mismatch. Only then is it
    loaded, from the same open file, with ``torch.load(weights_only=True)``.
    """
    path, prefix = _weights_file(weights)
    where = (f"place the file published at {weights.url} there (its sha256 must start with {prefix}, the hash in "
             "its name, or pracset refuses it)")
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(weights.url, str(path), prefix, progress=False)
        # offline: URLError (an OSError); a download whose hash differs: RuntimeError (nothing left in place)
        except (OSError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"the pretrained weights {weights} of torchvision/{name} are not in {path} and could "
                              f"not be downloaded ({_first_line(exc)}); {where}") from None
    try:
        require_regular_file(path, "pretrained weights file")  # a FIFO or a device would block or never end
        with open(path, "rb") as handle:  # hashed and loaded through one descriptor: never swapped in between
            digest = hashlib.sha256()
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
            if not digest.hexdigest().startswith(prefix):
                raise ConfigError(f"pretrained weights file {path} does not match the published hash of {weights} "
                                  f"(its sha256 starts {digest.hexdigest()[:len(prefix)]}, expected {prefix}); "
                                  f"refused without loading it: delete it and {where}")
            handle.seek(0)
            state = torch.load(handle, map_location="cpu", weights_only=True)
    except ConfigError:
        raise
    except OSError as exc:
        raise ConfigError(f"cannot read pretrained weights file {path}: {exc.strerror or _first_line(exc)}") from None
    except pickle.UnpicklingError:  # weights_only refused a global: the file would call a function when loaded
        raise ConfigError(f"pretrained weights file {path} holds more than tensors; refused (loading it could run "
                          "code)") from None
    except Exception as exc:  # torch raises many kinds for a damaged file
        raise ConfigError(f"pretrained weights file {path} is damaged or truncated ({_first_line(exc)})") from None
    if not isinstance(state, Mapping):
        raise ConfigError(f"pretrained weights file {path} holds a {type(state).__name__}, not a state dict")
    return dict(state)


#: One model is built at a time while torchvision's WeightsEnum.get_state_dict is swapped (_serving_state_dict).
_SERVING = threading.Lock()


@contextlib.contextmanager
def _serving_state_dict(name: str, weights, state: dict) -> Iterator[list]:
    """While the block runs, torchvision's builders get ``state`` when they ask ``weights`` for its state dict.

    Why this and not ``get_model(name, weights=None)`` + ``load_state_dict``:
    each builder derives its arguments from the weights (``num_classes`` from
    the categories; GoogLeNet and Inception v3 set ``transform_input`` and
    ``aux_logits``; others more) and some rewrite the state dict's keys before
    loading it (DenseNet). Copying that per model would drift from
    torchvision; every classification builder fetches the tensors through
    ``WeightsEnum.get_state_dict``, so swapping that one method keeps the
    builder's logic and feeds it the verified, tensors-only dict. It fails
    closed: when torchvision has no ``WeightsEnum.get_state_dict`` (another
    API), when the weights' class overrides it, or when a builder asks for
    other weights, it refuses; the yielded list is empty unless the builder
    asked (the caller refuses a model that never did).
    """
    try:
        from torchvision.models import _api
    except ImportError:
        _api = None
    enum = getattr(_api, "WeightsEnum", None)
    original = vars(enum).get("get_state_dict") if isinstance(enum, type) else None
    if original is None or not isinstance(weights, enum) or getattr(type(weights), "get_state_dict") is not original:
        raise ConfigError(f"this torchvision version loads the weights of torchvision/{name} in a way pracset cannot "
                          "check (WeightsEnum.get_state_dict is missing or overridden); --weights is refused")
    asked: list = []

    def get_state_dict(self, *args, **kwargs):
        if self is not weights:
            raise ConfigError(f"torchvision/{name} asked for the weights {self} besides the verified {weights}; "
                              "pracset loads no weights it has not checked")
        asked.append(self)
        return state

    with _SERVING:
        enum.get_state_dict = get_state_dict
        try:
            yield asked
        finally:
            enum.get_state_dict = original


def check_model_name(name: str) -> None:
    """Fail early on an unknown architecture name (the error lists the valid ones)."""
    if name.startswith(TORCHVISION_PREFIX):
        bare = name[len(TORCHVISION_PREFIX):]
        if bare not in torchvision_names():
            raise UnknownNameError(f"unknown torchvision model {bare!r}; valid names: {', '.join(torchvision_names())}")
    else:
        MODELS.get(name)


def build_model(name: str, spec: InputSpec, seed: int | None = None, *, weights: str | None = None) -> nn.Module:
    """Build architecture ``name`` sized for ``spec``, seeded when ``seed`` is given.

    A torchvision classification model is reached as ``torchvision/NAME``.
    For those only, ``weights`` names pretrained weights of torchvision's
    weights enum for the model (``"IMAGENET1K_V1"``, ``"DEFAULT"``, ...; see
    :func:`pretrained_weights`), for fine-tuning studies: the pretrained
    model is loaded (downloaded into ``torch.hub.get_dir()`` if not cached
    there; offline, a missing file is a one-line :class:`ConfigError`) only
    after its sha256 matched the hash torchvision publishes in the file's
    name, and only as tensors (``weights_only=True``; see
    :func:`_verified_state_dict`), and
    when ``spec.num_classes`` differs from the weights' class count, the
    final classifier layer is replaced by a freshly initialised one of the
    right size. One-channel data still goes through :class:`ChannelAdapter`.
    Pretrained weights expect ImageNet's normalisation; pracset normalises
    with the data set's own statistics, which fine-tuning adapts to. The
    model is checked with one forward pass on a dummy batch, so that an
    architecture that does not fit the data fails here with a clear message.
    """
    if seed is not None:
        torch.manual_seed(seed)
    if name.startswith(TORCHVISION_PREFIX):
        model = _build_torchvision(name[len(TORCHVISION_PREFIX):], spec, weights)
    else:
        if weights is not None:
            raise ConfigError(f"pretrained weights ({weights!r}) exist only for torchvision/NAME models, "
                              f"not for {name}")
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


__all__ = ["MODELS", "check_model_name", "InputSpec", "ModelEntry", "build_model", "has_convolutions",
           "pretrained_weights", "torchvision_names"]
