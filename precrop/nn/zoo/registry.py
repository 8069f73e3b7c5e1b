"""A strict registry of model architectures: names map to builders, duplicates are errors.

`Registry.get` is the one place a model's name is resolved: a registered (built-in) name, or any model
source of precrop/nn/zoo/sources.py (torchvision:<name>, timm:<name>, module.path:callable).
"""

from __future__ import annotations

from collections.abc import Iterator

from precrop.nn.zoo.sources import SOURCE_FORMS, TORCHVISION_PREFIX, resolve_source, source_kind
from precrop.nn.zoo.spec import ArchSpec, DuplicateArchError, ModelSourceError, UnknownArchError, shown

__all__ = [
    "TORCHVISION_PREFIX",
    "ArchSpec",
    "DuplicateArchError",
    "ModelSourceError",
    "Registry",
    "UnknownArchError",
]


class Registry:
    """Name -> ArchSpec; names holding a ':' are model sources, resolved by `precrop.nn.zoo.sources`."""

    def __init__(self) -> None:
        self._specs: dict[str, ArchSpec] = {}

    def register(self, spec: ArchSpec) -> None:
        """Add `spec`; a name that is already taken (or holds the source separator ':') raises DuplicateArchError."""
        if spec.name in self._specs:
            raise DuplicateArchError(f"architecture {spec.name!r} is already registered")
        if source_kind(spec.name) is not None:
            raise DuplicateArchError(f"{spec.name!r}: names with ':' are reserved for model sources")
        self._specs[spec.name] = spec

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._specs)

    def __iter__(self) -> Iterator[ArchSpec]:
        return iter(self._specs.values())

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def get(self, name: str) -> ArchSpec:
        """The spec for a registered name or a model source; UnknownArchError (one line) otherwise."""
        if name in self._specs:
            return self._specs[name]
        if source_kind(name) is not None:
            return resolve_source(name)
        raise UnknownArchError(
            f"unknown architecture {shown(name)}; valid names: {', '.join(self.names())}, or {', '.join(SOURCE_FORMS)}"
        )
