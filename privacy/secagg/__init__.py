"""fedguard's own SecAgg+ secure aggregation (Bonawitz et al. 2017; Bell et al. 2020).

The protocol core is transport-free (:class:`SecAggClient`, :class:`SecAggServer`
and their stage messages); :func:`secaggplus_mod` and :class:`SecAggPlusStrategy`
run it over Flower's Message API. See ``docs/secure-aggregation.md``.
"""

from privacy.secagg.client import SecAggClient
from privacy.secagg.config import SecAggConfig
from privacy.secagg.errors import (
    SecAggAbortedError,
    SecAggAuthenticationError,
    SecAggConfigError,
    SecAggProtocolError,
    SecAggRequiredError,
)
from privacy.secagg.server import SecAggServer

__all__ = [
    "SecAggAbortedError", "SecAggAuthenticationError", "SecAggClient", "SecAggConfig", "SecAggConfigError",
    "SecAggProtocolError", "SecAggRequiredError", "SecAggServer",
]
