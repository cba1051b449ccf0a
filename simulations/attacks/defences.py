"""Which defence can run where: robust rules need individual updates, secure aggregation hides them.

:func:`defence_applicability` tells an experiment (a sweep, a report) why a
defence cannot run in a configuration, so that it records "not applicable"
with the reason instead of silently leaving the cell out. Real runs keep
refusing such configurations (``coordinator.config`` validation).

+--------------------------------------+--------------------------+--------------------------------+
| defence                              | secure aggregation off   | SecAgg+ / CKKS                 |
+======================================+==========================+================================+
| median, trimmed mean, Krum,          | yes                      | no: the coordinator sees only  |
| Multi-Krum, Bulyan                   |                          | the sum (refused by config)    |
+--------------------------------------+--------------------------+--------------------------------+
| per-update norm check (``clip-norm``)| yes: rejects the update  | no: per-site norms are hidden  |
+--------------------------------------+--------------------------+--------------------------------+
| clipping at honest sites             | yes                      | yes (inside the protection mod)|
+--------------------------------------+--------------------------+--------------------------------+
| aggregate norm bounds (retry, skip)  | not needed (per update)  | yes, on the unmasked sum       |
+--------------------------------------+--------------------------+--------------------------------+
| held-out accuracy drop (retry, skip) | yes                      | yes                            |
+--------------------------------------+--------------------------+--------------------------------+
| site-level DP noise                  | yes (with fedavg)        | yes                            |
+--------------------------------------+--------------------------+--------------------------------+

Notes
-----
Robust rules: Yin et al. (2018) (median, trimmed mean), Blanchard et al.
(2017) (Krum, Multi-Krum), El Mhamdi et al. (2018) (Bulyan). Why they cannot
see through secure aggregation, and the input-validation alternative: Bell et
al. (2023), "ACORN".
"""

from __future__ import annotations

ROBUST_RULES = ("median", "trimmed-mean", "krum", "multi-krum", "bulyan")

INSTEAD = ("under secure aggregation the coordinator sees only the sum: site clipping, the aggregate bounds "
           "(the sum's norm and the held-out accuracy drop, with retry/skip) and site-level DP noise apply instead")


def defence_applicability(aggregation: str, secure_aggregation: str) -> str | None:
    """None if ``aggregation`` can run with ``secure_aggregation``; else why not, and what applies instead."""
    if secure_aggregation == "none" or aggregation not in ROBUST_RULES:
        return None
    return f"{aggregation} needs each site's individual update; {INSTEAD}"
