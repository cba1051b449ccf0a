"""Property: no sequence of runs, restarts and failures makes a site's recorded spend exceed its cap."""

from __future__ import annotations

import tempfile
import zlib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifecycle.errors import StateError
from privacy.ledger import Charge, PrivacyBudgetExceeded, SiteLedger

CAP, DELTA, M = 3.0, 1e-5, "c" * 64

ROUND = st.tuples(
    st.just("round"),
    st.integers(0, 3),                       # run
    st.integers(0, 4),                       # round (repeats = retries after a restart)
    st.sampled_from(["record", "site"]),
    st.booleans(),                           # the write fails mid-transaction
)
EVENT = st.one_of(ROUND, st.tuples(st.just("restart")))


class InjectedCrash(Exception):
    pass


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(EVENT, min_size=1, max_size=12))
def test_recorded_spend_never_exceeds_cap(events: list[tuple[object, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "site.db"
        ledger = SiteLedger.open(path)
        ledger.set_cap("site", CAP, DELTA)
        for event in events:
            if event[0] == "restart":
                ledger.close()
                ledger = SiteLedger.open(path)
                continue
            _, run, rnd, kind, crash = event
            charge = _charge(f"run-{run}", int(rnd), str(kind))  # type: ignore[call-overload]
            before = len(ledger.charges())
            if crash:
                original = ledger._audit

                def boom(*args: object, **kwargs: object) -> None:
                    raise InjectedCrash
                ledger._audit = boom  # type: ignore[method-assign]
                try:
                    ledger.record(charge)
                except (InjectedCrash, PrivacyBudgetExceeded, StateError):
                    pass
                finally:
                    ledger._audit = original  # type: ignore[method-assign]
                assert len(ledger.charges()) == before  # the crash left no half-written charge
            else:
                try:
                    ledger.record(charge)
                except PrivacyBudgetExceeded:
                    assert len(ledger.charges()) == before
            for k in ("record", "site"):
                assert ledger.spent("site", M, k) <= CAP
        ledger.close()
        final = SiteLedger.open(path)  # what a restarted agent would read
        assert all(final.spent("site", M, k) <= CAP for k in ("record", "site"))
        final.close()


def _charge(run: str, rnd: int, kind: str) -> Charge:
    """σ, q and steps derived from the key: a repeated key is a faithful retry, as after a restart."""
    seed = zlib.crc32(f"{run}/{rnd}/{kind}".encode())
    sigma = (0.8, 1.1, 2.0, 4.0)[seed % 4]
    q = (0.01, 0.1, 0.5)[(seed // 4) % 3]
    steps = 1 + (seed // 12) % 60
    return Charge("site", M, run, rnd, kind, sigma, q, steps, DELTA)
