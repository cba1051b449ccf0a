"""Built-in watermark schemes; importing this package registers them."""

from __future__ import annotations

from watermark.schemes.trigger_set import TriggerSetScheme
from watermark.schemes.weight_key import WeightKeyScheme

__all__ = ["TriggerSetScheme", "WeightKeyScheme"]
