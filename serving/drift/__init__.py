"""Drift monitoring of served models against their training reference (see :mod:`serving.drift.monitor`).

:mod:`~serving.drift.statistics` holds PSI and the binned KS distance,
:mod:`~serving.drift.monitor` the per-model live windows, alert state,
metrics and ``on_drift_alert`` callbacks, :mod:`~serving.drift.routes` the
admin endpoint ``GET /v1/models/{name}/drift``.
"""

from serving.drift.monitor import DriftCallback, DriftMonitors, DriftReport, FeatureDrift, ModelDrift

__all__ = ["DriftCallback", "DriftMonitors", "DriftReport", "FeatureDrift", "ModelDrift"]
