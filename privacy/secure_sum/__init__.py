"""A secure sum of integer vectors over Flower's Message API, outside the training rounds.

Some statistics a site contributes are not model updates (the reference
histograms of :mod:`federation.reference`), yet the coordinator must learn
only their sum. This package runs one dedicated exchange for such a vector,
with the same machinery as the rounds: fedguard's SecAgg+
(:class:`privacy.secagg.SecAggServer` and :class:`privacy.secagg.SecAggClient`,
on an integer encoding with scale 1) or CKKS (:mod:`privacy.he`: sites
encrypt, the coordinator adds, one contributing site decrypts the sum).

- :mod:`privacy.secure_sum.wire` — the ``"secure-sum"`` record and its contributor bounds;
- :mod:`privacy.secure_sum.coordinator` — :func:`secure_sum` over a ``Grid``;
- :mod:`privacy.secure_sum.site` — :func:`answer`, the site's handler.

Every sum it returns holds at least ``min_contributors`` vectors: a caller
that adds distributed noise (:mod:`privacy.discrete_gaussian`) sizes each
share for that floor, and the sites enforce it themselves.
"""

from privacy.secure_sum.coordinator import SumResult, secure_sum
from privacy.secure_sum.site import answer
from privacy.secure_sum.wire import MECHANISMS, Bounds, SecureSumError

__all__ = ["MECHANISMS", "Bounds", "SecureSumError", "SumResult", "answer", "secure_sum"]
