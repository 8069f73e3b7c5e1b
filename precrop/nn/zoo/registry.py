"""A strict registry of model architectures: names map to builders, duplicates are errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from torch import nn

from precrop.errors import UserError

TORCHVISION_PREFIX = "torchvision:"


@dataclass(frozen=True)
class ArchSpec:
    """How to build one architecture, and its natural number of classes and input size."""

    name: str
    build: Callable[[int], nn.Module]
    num_classes: int
    input_size: int
    description: str
    init: Callable[[nn.Module], None] | None = None


class DuplicateArchError(ValueError):
    """Raised when a name is registered twice."""


class UnknownArchError(UserError):
    """Raised for a name that is neither registered nor a torchvision classification model."""


class Registry:
    """Name -> ArchSpec. `torchvision:<name>` resolves any torchvision classification model."""

    def __init__(self) -> None:
        self._specs: dict[str, ArchSpec] = {}

    def register(self, spec: ArchSpec) -> None:
        """Add `spec`; a name that is already taken raises DuplicateArchError."""
        if spec.name in self._specs:
            raise DuplicateArchError(f"architecture {spec.name!r} is already registered")
        if spec.name.startswith(TORCHVISION_PREFIX):
            raise DuplicateArchError(f"the prefix {TORCHVISION_PREFIX!r} is reserved")
        self._specs[spec.name] = spec

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._specs)

    def __iter__(self) -> Iterator[ArchSpec]:
        return iter(self._specs.values())

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def get(self, name: str) -> ArchSpec:
        """The spec for `name`, or UnknownArchError listing the valid names."""
        if name in self._specs:
            return self._specs[name]
        if name.startswith(TORCHVISION_PREFIX):
            return _torchvision_spec(name)
        valid = ", ".join(self.names())
        raise UnknownArchError(f"unknown architecture {name!r}; valid names: {valid}, or torchvision:<model name>")


def torchvision_classification_models() -> list[str]:
    """Names of torchvision's classification models (no detection/segmentation/video)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _torchvision_spec(name: str) -> ArchSpec:
    tv_name = name[len(TORCHVISION_PREFIX) :]
    available = torchvision_classification_models()
    if tv_name not in available:
        raise UnknownArchError(f"unknown torchvision classification model {tv_name!r}; valid: {', '.join(available)}")

    def build(num_classes: int) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes)

    from precrop.nn.zoo.inits import init_pytorch_default

    size = 299 if tv_name == "inception_v3" else 224
    return ArchSpec(name, build, 1000, size, f"torchvision.models.{tv_name}", init_pytorch_default)
