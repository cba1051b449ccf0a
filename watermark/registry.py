"""Watermark schemes by name, as Opacus does with accountants (``create_accountant("rdp")``).

Usage::

    scheme = create_scheme("trigger-set", size=128)

A new scheme registers itself with :func:`register_scheme` in a module of
``watermark/schemes/`` that ``watermark/schemes/__init__.py`` imports.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from lifecycle.errors import ConfigurationError
from watermark.base import WatermarkScheme

SchemeT = TypeVar("SchemeT", bound=type[WatermarkScheme])

_SCHEMES: dict[str, type[WatermarkScheme]] = {}


def register_scheme(name: str) -> Callable[[SchemeT], SchemeT]:
    """Class decorator: register a :class:`WatermarkScheme` under ``name`` and set its ``name``.

    Raises
    ------
    ConfigurationError
        If another class is already registered under ``name``.
    """

    def decorate(cls: SchemeT) -> SchemeT:
        known = _SCHEMES.get(name)
        if known is not None and known is not cls:
            raise ConfigurationError(
                f"watermark scheme '{name}' is already registered by {known.__qualname__}; pick another name"
            )
        cls.name = name
        _SCHEMES[name] = cls
        return cls

    return decorate


def available_schemes() -> list[str]:
    """Names accepted by :func:`create_scheme`, sorted."""
    _load_builtin()
    return sorted(_SCHEMES)


def create_scheme(name: str, **kwargs: Any) -> WatermarkScheme:
    """Create the scheme registered under ``name`` with its parameters ``kwargs``.

    Raises
    ------
    ConfigurationError
        If ``name`` is unknown (the message lists the available schemes) or a
        parameter is unknown or invalid.
    """
    _load_builtin()
    cls = _SCHEMES.get(name)
    if cls is None:
        raise ConfigurationError(
            f"unknown watermark scheme '{name}'; available: {', '.join(sorted(_SCHEMES))}"
        )
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigurationError(f"invalid parameters for watermark scheme '{name}': {exc}") from exc


def _load_builtin() -> None:
    """Import the built-in schemes (lazily: they import this module to register)."""
    importlib.import_module("watermark.schemes")
