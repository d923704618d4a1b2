"""Attributes of a package imported on first use (PEP 562), so that light commands skip heavy imports."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_attributes(package: str, names: Mapping[str, str], namespace: dict) -> tuple[Callable, Callable]:
    """Module-level ``__getattr__`` and ``__dir__`` for a package.

    Args:
        package: the package's ``__name__``.
        names: attribute name -> relative module that defines it (e.g.
            ``{"train": ".run"}``).
        namespace: the package's ``globals()``; an attribute, once
            imported, is stored there (later lookups are plain).

    Returns:
        ``(__getattr__, __dir__)`` to assign in the package.
    """

    def __getattr__(name: str):
        if name in names:
            value = getattr(importlib.import_module(names[name], package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
