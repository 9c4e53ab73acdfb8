"""An architecture given by name (the registry), as an ``nn.Module``, or as a function that makes one.

:func:`resolve_architecture` turns any of the three into an
:class:`Architecture`: a name recorded in run identities and manifests, and
``build(spec, seed)``, which gives a fresh, seeded initialisation each call.
Ticket methods need that: IMP rewinds to the initialisation, the controls
re-initialise with another seed.

- A registered name (``"resnet20"``, ``"torchvision/resnet18"``) is built by
  :func:`pracset.models.build_model`, sized for the data.
- A function ``make() -> nn.Module`` is called after ``torch.manual_seed(seed)``.
- An ``nn.Module`` is a template: each build deep-copies it and re-draws its
  parameters with every submodule's ``reset_parameters()`` after
  ``torch.manual_seed(seed)``, so the same seed gives the same weights. (Its
  own current weights are not used: to start from given weights, pass a
  function that loads them.)

A Python architecture is named ``python:MODULE.CLASS:DIGEST``, the digest
covering its parameter and buffer names and shapes, so a run directory or a
manifest built on another network is told apart.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import Callable, Union

import torch
import torch.nn as nn

from pracset.errors import ConfigError
from pracset.models import TORCHVISION_PREFIX, InputSpec, build_model, check_model_name, pretrained_weights

ArchitectureLike = Union[str, nn.Module, Callable[[], nn.Module]]


def describe_module(model: nn.Module) -> str:
    """``python:MODULE.CLASS:DIGEST`` with a digest of the state's names and shapes and the module's ``repr``
    (which shows its layers' settings: a dropout rate or an activation changes the name)."""
    cls = type(model)
    shapes = ";".join(f"{name}:{tuple(t.shape)}" for name, t in model.state_dict().items())
    digest = hashlib.blake2b((shapes + "\n" + repr(model)).encode(), digest_size=6).hexdigest()
    return f"python:{cls.__module__}.{cls.__qualname__}:{digest}"


def reset_all(model: nn.Module, seed: int | None) -> nn.Module:
    """Draw fresh weights for ``model`` in place: every submodule's ``reset_parameters()`` after ``manual_seed``.

    A parameter that no such submodule owns (an ``nn.Parameter`` set directly
    on a custom module) cannot be redrawn: it is refused, since a control
    or a seed would then silently share it with the ticket.
    """
    if seed is not None:
        torch.manual_seed(seed)
    reset = [m for m in model.modules() if callable(getattr(m, "reset_parameters", None))]
    covered = {id(p) for m in reset for p in m.parameters(recurse=False)}
    missed = [n for n, p in model.named_parameters() if id(p) not in covered]
    if missed:
        raise ConfigError(f"{type(model).__name__}.{missed[0]} belongs to no submodule with reset_parameters(), so "
                          "pracset cannot draw fresh weights for it (the random re-initialisation control needs "
                          "them); give that module a reset_parameters() method")
    for module in reset:
        module.reset_parameters()
    return model


def _reinitialise(template: nn.Module, seed: int | None) -> nn.Module:
    return reset_all(copy.deepcopy(template), seed)


@dataclass(frozen=True)
class Architecture:
    """What a run trains: ``name`` (recorded) and ``make(spec, seed)`` (a fresh model on the CPU).

    ``random`` builds a randomly initialised model where ``make`` starts from
    pretrained weights (the random re-initialisation control needs it); it is
    ``make`` itself otherwise.
    """

    name: str
    make: Callable[[InputSpec, int | None], nn.Module]
    python: bool = False
    random: Callable[[InputSpec, int | None], nn.Module] | None = None

    def build(self, spec: InputSpec, seed: int | None = None, sample: torch.Tensor | None = None, *,
              pretrained: bool = True) -> nn.Module:
        """A freshly initialised model in training mode, checked on ``sample`` inputs when given (Python models).

        ``pretrained=False`` draws random weights even for an architecture with pretrained ones.
        """
        if self.python and not pretrained:
            # a Python model's own function may load weights (or return one object): the random
            # re-initialisation control redraws every weight itself
            model = reset_all(self.make(spec, None), seed)
        else:
            make = self.make if pretrained or self.random is None else self.random
            model = make(spec, seed)
        if self.python and sample is not None:
            check_outputs(model, sample, spec.num_classes, self.name)
        return model.train()


def check_outputs(model: nn.Module, sample: torch.Tensor, num_classes: int, name: str) -> None:
    """Refuse a model that cannot classify ``sample`` (a few inputs on the CPU) into ``num_classes`` classes."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(sample)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ConfigError(f"model {name} does not take inputs of shape {tuple(sample.shape[1:])}: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.shape != (len(sample), num_classes):
        shape = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model {name} returns {shape} outputs per example, expected {num_classes} class scores")


def resolve_architecture(arch: ArchitectureLike, weights: str | None = None) -> Architecture:
    """An :class:`Architecture` from a registered name, an ``nn.Module`` template or a function that makes one.

    ``weights`` names pretrained weights of a ``torchvision/NAME`` model
    (:func:`pracset.models.build_model`); the architecture is then recorded
    as ``torchvision/NAME (pretrained WEIGHTS)``.
    """
    if isinstance(arch, Architecture):
        return arch
    if weights is not None and not isinstance(arch, str):
        raise ConfigError("weights name pretrained weights of a torchvision/NAME model; load your own model's "
                          "weights in the function that builds it")
    if isinstance(arch, str):
        check_model_name(arch)
        if weights is not None:  # checked here, before any data is loaded or anything written
            if not arch.startswith(TORCHVISION_PREFIX):
                raise ConfigError(f"weights name pretrained weights of torchvision/NAME models; {arch} has none")
            pretrained_weights(arch[len(TORCHVISION_PREFIX):], weights)
        random = lambda spec, seed: build_model(arch, spec, seed=seed)  # noqa: E731
        if weights is None:
            return Architecture(arch, random)
        return Architecture(f"{arch} (pretrained {weights})",
                            lambda spec, seed: build_model(arch, spec, seed=seed, weights=weights), random=random)
    if isinstance(arch, nn.Module):
        template = copy.deepcopy(arch).cpu()
        return Architecture(describe_module(template), lambda spec, seed: _reinitialise(template, seed), python=True)
    if callable(arch):
        def make(spec: InputSpec, seed: int | None) -> nn.Module:
            if seed is not None:
                torch.manual_seed(seed)
            model = arch()
            if not isinstance(model, nn.Module):
                raise ConfigError(f"the model function returned a {type(model).__name__}, not an nn.Module")
            return model.cpu()
        with torch.random.fork_rng():  # naming it must not move the caller's random state
            first, second = make(InputSpec(1, 1, 1, 1), 0), make(InputSpec(1, 1, 1, 1), 0)
        if first is second:
            raise ConfigError("the model function returns the same model object every call; it must build a new "
                              "one (pracset trains several: rounds, controls)")
        return Architecture(describe_module(first), make, python=True)
    raise ConfigError(f"an architecture is a registered name (see `pracset models`), an nn.Module or a function "
                      f"returning one; got {type(arch).__name__}")


__all__ = ["Architecture", "ArchitectureLike", "check_outputs", "describe_module", "resolve_architecture"]
