"""The contract between sites and coordinator, shared by both sides of a federation.

Typed protocol messages (:mod:`federation.protocol`), the data schema and
tabular I/O (:mod:`federation.schema`, :mod:`federation.tabular`), reference
statistics as sites compute them (:mod:`federation.reference`), the enrolment
bundle format (:mod:`federation.bundle`), and the runtime plumbing (Flower
runtime options, TLS relay streams, process control). It lives apart from
``client`` and ``coordinator`` because neither side may import the other
(DESIGN §3); it may import ``privacy`` and ``lifecycle``.
"""

import logging

logger = logging.getLogger("fedguard.federation")
