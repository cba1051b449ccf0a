"""Drift statistics on binned distributions (PSI, binned KS): they live in :mod:`lifecycle.bom.drift`.

The coordinator scores its held-out set against the ML-BOM's reference with
the same PSI when it publishes (the ``max-drift`` gate), and the coordinator
may not import serving (DESIGN.md §3), so the statistics moved to lifecycle;
serving keeps this name for its monitor.
"""

from lifecycle.bom.drift import DEFAULT_SMOOTHING, Baseline, ks_distance, psi, smoothed_proportions

__all__ = ["DEFAULT_SMOOTHING", "Baseline", "ks_distance", "psi", "smoothed_proportions"]
