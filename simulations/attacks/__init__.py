"""Attacks as site behaviours, and what defends against them (research mode, docs/research.md).

One module per attack behind a registry (:func:`create_attack`), the client
mods that make a seeded choice of sites run one (:mod:`.mods`), the success
metrics measured after the run (:mod:`.metrics`), and where each defence
applies (:mod:`.defences`).
"""

from simulations.attacks.base import Attack, Records, Setting
from simulations.attacks.defences import defence_applicability
from simulations.attacks.mods import AttackMods, attack_mods, select_attackers
from simulations.attacks.registry import NO_ATTACK, available_attacks, create_attack, register_attack

__all__ = ["NO_ATTACK", "Attack", "AttackMods", "Records", "Setting", "attack_mods", "available_attacks",
           "create_attack", "defence_applicability", "register_attack", "select_attackers"]
