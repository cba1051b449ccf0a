"""Attacks behind a small registry: ``create_attack("scaling:10")``, ``available_attacks()``.

A spec is ``name``, ``name:value`` (sets the attack's primary parameter),
``name:key=value,key=value`` (any of its parameters, e.g.
``backdoor:target=1,fraction=0.3,clip=honest``), or both
(``sign-flipping:5,clip=skip``). ``none`` is no attack.
A research extension registers its own attack class with
:func:`register_attack`, as Opacus registers accountants (DESIGN §7 item 4).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from lifecycle.errors import ConfigurationError
from simulations.attacks.alie import ALIE
from simulations.attacks.backdoor import Backdoor
from simulations.attacks.base import Attack, Setting
from simulations.attacks.label_flipping import LabelFlipping
from simulations.attacks.scaling import Scaling
from simulations.attacks.sign_flipping import SignFlipping

NO_ATTACK = "none"

ATTACKS: dict[str, type[Attack]] = {cls.name: cls for cls in (LabelFlipping, SignFlipping, Scaling, Backdoor, ALIE)}


def available_attacks() -> tuple[str, ...]:
    """The names :func:`create_attack` accepts (besides ``none``)."""
    return tuple(ATTACKS)


def register_attack(cls: type[Attack], *, replace: bool = False) -> None:
    """Make ``cls.name`` available to :func:`create_attack` (``replace`` to override a registered one)."""
    if cls.name in ATTACKS and not replace:
        raise ConfigurationError(f"attack '{cls.name}' is already registered; pass replace=True to override it")
    ATTACKS[cls.name] = cls


def attack_name(spec: str) -> str:
    """The attack's name in ``spec`` (``scaling:10`` → ``scaling``)."""
    return spec.split(":", 1)[0].strip()


def _convert(attack: str, key: str, raw: str, default: Any) -> Any:
    kind = type(default)
    try:
        return kind(float(raw)) if kind is int and float(raw).is_integer() else kind(raw)
    except ValueError:
        raise ConfigurationError(f"attack {attack}: {key}={raw!r} is not a valid {kind.__name__}") from None


def _params(cls: type[Attack], text: str) -> dict[str, Any]:
    options = {f.name: f.default for f in fields(cls) if f.name != "setting"}
    if not text:
        return {}
    items = text.split(",")
    if "=" not in items[0]:
        if cls.primary is None:
            raise ConfigurationError(f"attack {cls.name} takes no bare parameter; use {cls.name}:key=value")
        items[0] = f"{cls.primary}={items[0]}"
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in options:
            raise ConfigurationError(f"attack {cls.name}: unknown parameter {item.strip()!r}; "
                                     f"it takes {', '.join(options)}")
        params[key] = _convert(cls.name, key, raw.strip(), options[key])
    return params


def create_attack(spec: str, *, sites: int = 0, attackers: int = 0, seed: int = 0) -> Attack:
    """The attack ``spec`` names, for a federation of ``sites`` with ``attackers`` of them attacking.

    Raises
    ------
    ConfigurationError
        Unknown attack name or parameter, or a parameter value the attack refuses.
    """
    name, _, text = spec.strip().partition(":")
    if name not in ATTACKS:
        raise ConfigurationError(f"unknown attack '{name}'; choose one of {', '.join((NO_ATTACK, *ATTACKS))}")
    cls = ATTACKS[name]
    return cls(setting=Setting(sites, attackers, seed), **_params(cls, text.strip()))
