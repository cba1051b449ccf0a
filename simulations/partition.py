"""Moved to :mod:`simulations.data.partitioners` (kept so that older imports still work)."""

from __future__ import annotations

from simulations.data.partitioners import dirichlet_partition

__all__ = ["dirichlet_partition"]
