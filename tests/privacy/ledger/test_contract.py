"""The privacy-ledger contract, run against every implementation (see conftest.py)."""

from __future__ import annotations

import math
import threading
from dataclasses import replace

import pytest
from sqlmodel import Session

from lifecycle import audit
from lifecycle.errors import ConfigurationError
from privacy.accountants import GaussianHistory, compose, naive_epsilon_sum
from privacy.ledger import Charge, LedgerConflictError, PrivacyBudgetExceeded, PrivacyLedger, SqlLedger
from privacy.ledger.guard import admit, reserve
from tests.privacy.ledger.conftest import Opener

M1, M2 = "a" * 64, "b" * 64


def charge(run: str = "run-1", rnd: int = 1, *, site: str = "site-a", manifest: str = M1, kind: str = "record",
           sigma: float = 1.1, q: float = 0.05, steps: int = 40) -> Charge:
    return Charge(site, manifest, run, rnd, kind, sigma, q, steps, 1e-5)


def audit_events(ledger: PrivacyLedger) -> int:
    assert isinstance(ledger, SqlLedger)
    with Session(ledger.engine) as session:
        return audit.verify_chain(session)


def test_empty_ledger(ledger: PrivacyLedger) -> None:
    assert ledger.spent("site-a", M1, "record") == 0.0
    assert math.isinf(ledger.remaining("site-a", M1, "record"))
    assert ledger.summary() == [] and ledger.charges() == []


def test_spend_composes_over_rounds_and_runs_not_summed(ledger: PrivacyLedger) -> None:
    charges = [charge("run-1", 1), charge("run-1", 2), charge("run-2", 1, sigma=2.0, q=0.1, steps=10)]
    for c in charges:
        assert ledger.record(c) is True
    histories = [c.history() for c in charges]
    spent = ledger.spent("site-a", M1, "record")
    assert spent == pytest.approx(compose(histories, 1e-5), rel=1e-9)
    assert spent < naive_epsilon_sum(histories)[0]
    (row,) = ledger.summary()
    assert (row.runs, row.charges, row.steps) == (2, 3, 90)
    assert row.epsilon_naive == pytest.approx(naive_epsilon_sum(histories)[0])


def test_recording_twice_does_not_double_count(ledger: PrivacyLedger) -> None:
    assert ledger.record(charge()) is True
    once = ledger.spent("site-a", M1, "record")
    assert ledger.record(charge()) is False
    assert ledger.spent("site-a", M1, "record") == once and len(ledger.charges()) == 1
    with pytest.raises(LedgerConflictError, match="other parameters"):
        ledger.record(charge(steps=41))


def test_recording_tells_the_spend_that_a_second_read_would(ledger: PrivacyLedger) -> None:
    """``record_spent`` (one transaction for a site's reply) is ``record`` then ``spent``, cap's δ included."""
    ledger.set_cap("site-a", 50.0, 1e-6, kind="record")
    for c in (charge("run-1", 1), charge("run-1", 2), charge("run-1", 1), charge("run-2", 1, site="site-b")):
        spent = ledger.record_spent(c)
        assert spent == pytest.approx(ledger.spent(c.site, M1, "record"), rel=1e-12) and spent > 0
    assert len(ledger.charges()) == 3  # the repeated charge counted once and told the same spend
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.record_spent(charge("run-3", 1, steps=100_000))
    assert len(ledger.charges()) == 3


def test_a_reply_is_charged_from_what_the_ledger_already_holds_and_wholly_or_not_at_all(
        ledger: PrivacyLedger) -> None:
    """``record_reply``: ``build`` sees the site's charges on the manifest; an over-cap charge writes none."""
    ledger.set_cap("site-a", 5.0, 1e-5, kind="site")
    seen: list[int] = []

    def reply(rnd: int, site_steps: int) -> list[Charge]:
        def build(charged: list[Charge]) -> list[Charge]:
            seen.append(len(charged))
            before = sum(c.steps for c in charged if c.kind == "record")
            return [charge("run-1", rnd, steps=before + 40), charge("run-1", rnd, kind="site", steps=site_steps)]
        return build  # type: ignore[return-value]

    spent = ledger.record_reply("site-a", M1, reply(1, 1), actor="site:site-a")  # type: ignore[arg-type]
    assert set(spent) == {"record", "site"} and spent["record"] == ledger.spent("site-a", M1, "record")
    assert spent["site"] == ledger.spent("site-a", M1, "site") > 0
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.record_reply("site-a", M1, reply(2, 10_000))  # type: ignore[arg-type]  # the site charge is over cap
    assert seen == [0, 2] and len(ledger.charges("site-a")) == 2  # the round-2 record charge was not kept either
    assert ledger.record_reply("site-a", M1, reply(2, 1))["record"] > spent["record"]  # type: ignore[arg-type]
    assert [c.steps for c in ledger.charges("site-a", M1, "record")] == [40, 80] and seen == [0, 2, 2]


def test_a_round_of_releases_is_recorded_as_one_batch_with_the_same_checks(ledger: PrivacyLedger) -> None:
    ledger.set_cap("site-b", 0.5, 1e-5)
    ledger.record(charge("run-1", 1, site="site-a"))
    released = [charge("run-1", 1, site="site-a"), charge("run-1", 2, site="site-a"),
                charge("run-1", 2, site="site-b", steps=400)]  # site-a round 1 is there already; site-b goes over cap
    assert ledger.record_released(released, actor="coordinator") == 2
    assert ledger.record_released(released, actor="coordinator") == 0
    assert len(ledger.charges("site-a")) == 2 and len(ledger.charges("site-b")) == 1  # over cap: recorded, truthfully
    assert ledger.spent("site-a", M1, "record") == pytest.approx(
        compose([charge("run-1", 1).history(), charge("run-1", 2).history()], 1e-5), rel=1e-9)
    with pytest.raises(LedgerConflictError, match="other parameters"):
        ledger.record_released([charge("run-1", 3), charge("run-1", 2, steps=41)])
    assert len(ledger.charges("site-a")) == 2  # nothing of the failed batch was written
    if isinstance(ledger, SqlLedger):
        assert audit_events(ledger) >= 4


def test_levels_manifests_and_sites_are_separate(ledger: PrivacyLedger) -> None:
    ledger.record(charge())
    ledger.record(charge(kind="site", q=0.2, steps=1))
    ledger.record(charge(manifest=M2))
    ledger.record(charge(site="site-b"))
    one = GaussianHistory(1.1, 0.05, 40, 1e-5).epsilon()
    assert ledger.spent("site-a", M1, "record") == pytest.approx(one)
    assert ledger.spent("site-a", M2, "record") == pytest.approx(one)
    assert ledger.spent("site-a", M1, "site") == pytest.approx(GaussianHistory(1.1, 0.2, 1, 1e-5).epsilon())
    assert [(r.site, r.manifest, r.kind) for r in ledger.summary("site-a")] == [
        ("site-a", M1, "record"), ("site-a", M1, "site"), ("site-a", M2, "record")]
    assert ledger.manifests("site-a")[0] == M2


def test_cap_is_enforced_atomically_with_the_numbers(ledger: PrivacyLedger) -> None:
    ledger.set_cap("site-a", 3.0, 1e-5)
    first = GaussianHistory(1.1, 0.05, 40, 1e-5).epsilon()
    assert first < 3.0
    ledger.record(charge())
    with pytest.raises(PrivacyBudgetExceeded) as info:
        ledger.record(charge(rnd=2, steps=400))
    err = info.value
    assert (err.site, err.cap, err.delta) == ("site-a", 3.0, 1e-5)
    assert err.spent == pytest.approx(first) and err.projected > 3.0 and "over its cap" in str(err)
    assert len(ledger.charges()) == 1  # nothing written
    assert ledger.remaining("site-a", M1, "record") == pytest.approx(3.0 - first)
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.check("site-a", M1, "record", GaussianHistory(1.1, 0.05, 400, 1e-5))
    assert ledger.project("site-a", M1, "record", GaussianHistory(1.1, 0.05, 1, 1e-5)).allowed


def test_unenforced_record_tells_the_truth_over_cap(ledger: PrivacyLedger) -> None:
    ledger.set_cap("site-a", 0.1, 1e-5)
    assert ledger.record(charge(), enforce=False)
    assert ledger.spent("site-a", M1, "record") > 0.1 and ledger.remaining("site-a", M1, "record") == 0.0


def test_most_specific_cap_applies(ledger: PrivacyLedger) -> None:
    ledger.set_cap("*", 5.0, 1e-5)
    ledger.set_cap("site-a", 2.0, 1e-5, kind="site")
    ledger.set_cap("site-a", 3.0, 1e-6, manifest=M1, kind="site")
    assert ledger.cap_for("site-b", M1, "record").epsilon == 5.0  # type: ignore[union-attr]
    assert ledger.cap_for("site-a", M2, "site").epsilon == 2.0  # type: ignore[union-attr]
    assert ledger.cap_for("site-a", M1, "site").delta == 1e-6  # type: ignore[union-attr]
    ledger.set_cap("site-a", 2.5, 1e-5, kind="site")  # replace
    assert ledger.cap_for("site-a", M2, "site").epsilon == 2.5  # type: ignore[union-attr]
    assert len(ledger.caps()) == 3
    with pytest.raises(ConfigurationError):
        ledger.set_cap("site-a", 1.0, 0.0)


def test_state_survives_a_restart(open_ledger: Opener) -> None:
    first = open_ledger()
    first.set_cap("site-a", 4.0, 1e-5)
    first.record(charge())
    spent = first.spent("site-a", M1, "record")
    first.close()
    again = open_ledger()
    assert again.spent("site-a", M1, "record") == pytest.approx(spent)
    assert again.record(charge()) is False  # a restarted coordinator re-recording round 1
    assert again.cap_for("site-a", M1, "record").epsilon == 4.0  # type: ignore[union-attr]


def test_every_write_is_audited_in_the_chain(ledger: PrivacyLedger) -> None:
    before = audit_events(ledger)
    ledger.set_cap("site-a", 4.0, 1e-5)
    ledger.set_cap("site-a", 4.0, 1e-5)  # unchanged: no event
    ledger.record(charge())
    ledger.record(charge())  # duplicate: no event
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.record(charge(rnd=2, sigma=0.5, q=1.0, steps=100))  # refused: no event
    assert audit_events(ledger) == before + 2


def test_admission_and_reservation(ledger: PrivacyLedger) -> None:
    ledger.set_cap("site-b", 0.5, 1e-5, kind="site")
    step = GaussianHistory(1.0, 0.5, 1, 1e-5)
    manifests = {"site-a": M1, "site-b": M2}
    admission = admit(ledger, ["site-a", "site-b"], "site", step, manifests=manifests)
    assert admission.admitted == ("site-a",) and admission.refused[0].site == "site-b"
    assert ledger.charges() == []  # admission writes nothing
    reserved = reserve(ledger, ["site-a", "site-b"], run_id="r", round=1, kind="site", history=step,
                       manifests=manifests)
    assert reserved.admitted == ("site-a",)
    again = reserve(ledger, ["site-a"], run_id="r", round=1, kind="site", history=step, manifests=manifests)
    assert again.admitted == ("site-a",) and len(ledger.charges()) == 1  # restart: charged once


def test_concurrent_writers_never_overshoot_the_cap(open_ledger: Opener) -> None:
    """Two coordinators (own engines) race to charge rounds; the lock keeps check-and-insert atomic."""
    setup = open_ledger()
    setup.set_cap("site-a", 4.0, 1e-5)
    ledgers = [open_ledger(), open_ledger()]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        for rnd in range(12):
            try:
                ledgers[i].record(charge(f"run-{i}", rnd, steps=30))
            except PrivacyBudgetExceeded:
                pass
            except BaseException as exc:  # noqa: BLE001  # pragma: no cover - the main thread asserts none
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    spent = setup.spent("site-a", M1, "record")
    assert 0 < spent <= 4.0
    assert len(setup.charges()) < 24  # the cap did bite


def test_invalid_charges_are_refused() -> None:
    with pytest.raises(ConfigurationError):
        replace(charge(), kind="user")
    with pytest.raises(ConfigurationError):
        charge(manifest="*")
    with pytest.raises(ConfigurationError):
        charge(q=0.0)
