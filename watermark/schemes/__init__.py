"""Built-in watermark schemes; importing this package registers them."""

from __future__ import annotations

from watermark.schemes.trigger_set import TriggerSetScheme

__all__ = ["TriggerSetScheme"]
