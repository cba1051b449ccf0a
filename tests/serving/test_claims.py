"""Single-flight marks: one claimant at a time, released or lapsed, never held for good."""

from __future__ import annotations

from serving.claims import Claims


def test_one_claimant_until_released() -> None:
    claims = Claims(lapse=5.0)
    assert claims.take("k", 100.0)
    assert claims.held("k", 101.0) and not claims.take("k", 101.0)
    assert claims.take("other", 101.0)  # marks are per name
    claims.release("k")
    assert not claims.held("k", 101.0) and claims.take("k", 101.0)


def test_a_claim_never_released_lapses() -> None:
    claims = Claims(lapse=5.0)
    assert claims.take("k", 100.0)
    assert not claims.take("k", 104.9)
    assert claims.take("k", 105.0)  # its claimant vanished (its event loop closed): another may go
    assert claims.take("k", 50.0)  # a clock that stepped back does not keep it held either
