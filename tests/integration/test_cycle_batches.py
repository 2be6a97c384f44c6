"""The batched cycle close on SQLite and PostgreSQL: closing many organizations together, chunk by
chunk, leaves exactly what closing each one on its own leaves, lot by lot and invoice by invoice; a
crash in the middle of a chunk and a rerun equal a clean close; an organization that fails inside a
chunk fails alone."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from creditmeter.billing import cycle, domain
from creditmeter.billing import subscriptions as subs
from creditmeter.billing.cycle import Due
from creditmeter.billing.models import Invoice
from creditmeter.kit.db import Database
from tests.conftest import utc
from tests.integration.test_cycle_close import (
    CATALOG,
    C,
    assert_clean,
    spend,
    state,
    subscribe,
)

MakeOrg = Callable[..., str]
JANUARY = domain.period_of(utc(2026, 1, 1), CATALOG.zone)

#: (plan, extra subscription terms, credits used in January, later change in January)
PROFILES: list[tuple[str, dict[str, Any], int, str | None]] = [
    ("standard", {}, 300, None),
    ("professional", {}, 700, "standard"),  # a pending downgrade
    ("enterprise", {"allocation_micros": 10 * C, "rollover": "never"}, 25, None),  # overage
    ("standard", {}, 0, "cancel"),
    ("professional", {}, 6000, None),  # arrears paid by the new month's credits
]


def prepare(db: Database, org: str, profile: int) -> None:
    plan, extra, used, change = PROFILES[profile]
    subscribe(db, org, plan, utc(2026, 1, 5), **extra)
    if used:
        spend(db, org, used, utc(2026, 1, 20))
    if change == "cancel":
        with db.write() as session:
            subs.cancel(session, CATALOG, org, "live", utc(2026, 1, 25))
    elif change:
        subscribe(db, org, change, utc(2026, 1, 25))


def numbers(db: Database) -> list[str]:
    with db.read() as session:
        return sorted(session.scalars(select(Invoice.number)))


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    profiles=st.lists(
        st.integers(min_value=0, max_value=len(PROFILES) - 1), min_size=1, max_size=7
    ),
    chunk=st.integers(min_value=1, max_value=4),
)
def test_a_batch_close_equals_closing_each_organization_on_its_own(
    db: Database, make_org: MakeOrg, profiles: list[int], chunk: int
) -> None:
    batched = [make_org(f"Batched {i}") for i in range(len(profiles))]
    single = [make_org(f"Single {i}") for i in range(len(profiles))]
    for a, b, profile in zip(batched, single, profiles, strict=True):
        prepare(db, a, profile)
        prepare(db, b, profile)
    before = len(numbers(db))
    for org in single:
        for item in cycle.run_due(db, utc(2026, 3, 1), org, catalog=CATALOG):
            assert item.ok, item.error
    with db.read() as session:
        work = [
            d for d in cycle.due(session, CATALOG, utc(2026, 3, 1)) if d.organization_id in batched
        ]
    results = cycle.run(db, CATALOG, work, utc(2026, 3, 1), chunk_size=chunk)
    assert all(r.ok for r in results), [r.error for r in results]
    assert [r.due for r in results] == work
    for a, b in zip(batched, single, strict=True):
        assert state(db, a) == state(db, b)
    taken = numbers(db)[before:]
    assert taken == sorted(set(taken))  # gapless and unique across chunks
    assert_clean(db)


class PowerCut(BaseException):
    """The process dies: nothing after it runs, in this close or any other."""


@pytest.mark.parametrize("crash_after", cycle.STEPS)
def test_a_crash_in_the_middle_of_a_chunk_and_a_rerun_equal_a_clean_close(
    db: Database, make_org: MakeOrg, crash_after: str
) -> None:
    clean = [make_org(f"Clean {i}") for i in range(4)]
    crashed = [make_org(f"Crashed {i}") for i in range(4)]
    for i, (a, b) in enumerate(zip(clean, crashed, strict=True)):
        prepare(db, a, i)
        prepare(db, b, i)
    for org in clean:
        cycle.run_due(db, utc(2026, 2, 1), org, catalog=CATALOG)
    # The step's chunk transaction committed for all four; the process dies while the second
    # close's hook runs, so the third and fourth never hear of it.
    victim = sorted(crashed)[1]

    def crash(item: Due, step: str) -> None:
        if step == crash_after and item.organization_id == victim:
            raise PowerCut

    work = [Due(JANUARY, org, "live") for org in sorted(crashed)]
    with pytest.raises(PowerCut):
        cycle.run(db, CATALOG, work, utc(2026, 2, 1), after_step=crash)
    rerun = cycle.run_due(db, utc(2026, 2, 1, 0, 10), catalog=CATALOG)
    assert all(r.ok for r in rerun)
    remaining = list(cycle.STEPS[cycle.STEPS.index(crash_after) + 1 :])
    assert all(r.steps_run == remaining for r in rerun)
    assert len(rerun) == (4 if remaining else 0)
    for a, b in zip(clean, crashed, strict=True):
        assert state(db, a) == state(db, b)
    assert_clean(db)


@pytest.mark.parametrize("failing_step", ["statement", "expiry", "allocation", "invoice"])
def test_an_organization_failing_inside_a_chunk_fails_alone(
    db: Database, make_org: MakeOrg, monkeypatch: pytest.MonkeyPatch, failing_step: str
) -> None:
    good = [make_org(f"Good {i}") for i in range(3)]
    bad = make_org("Bad")
    reference = make_org("Reference")
    for org in [*good, bad, reference]:
        prepare(db, org, 1)
    cycle.run_due(db, utc(2026, 2, 1), reference, catalog=CATALOG)
    original = cycle.run_step

    def failing(session: Any, catalog: Any, items: Any, step: str, now: datetime) -> Any:
        if step == failing_step and any(i.organization_id == bad for i in items):
            raise RuntimeError(f"{bad} cannot be closed")
        return original(session, catalog, items, step, now)

    monkeypatch.setattr(cycle, "run_step", failing)
    results = cycle.run_due(db, utc(2026, 2, 1), catalog=CATALOG)
    by_org = {r.due.organization_id: r for r in results}
    assert by_org[bad].error == f"RuntimeError: {bad} cannot be closed"
    assert by_org[bad].steps_run == list(cycle.STEPS[: cycle.STEPS.index(failing_step)])
    for org in good:
        assert by_org[org].ok
        assert by_org[org].steps_run == list(cycle.STEPS)
        assert state(db, org) == state(db, reference)
    monkeypatch.setattr(cycle, "run_step", original)
    [resumed] = cycle.run_due(db, utc(2026, 2, 1, 1), catalog=CATALOG)
    assert resumed.ok
    assert state(db, bad) == state(db, reference)
    assert_clean(db)


def test_a_charge_that_fails_for_one_invoice_of_a_chunk_fails_that_close_alone(
    db: Database, make_org: MakeOrg
) -> None:
    orgs = [make_org(f"Org {i}") for i in range(3)]
    for org in orgs:
        prepare(db, org, 0)
    failing = sorted(orgs)[1]
    charged: list[str] = []

    def charge(database: Database, invoice_id: str, now: datetime) -> None:
        with database.read() as session:
            invoice = session.get(Invoice, invoice_id)
            assert invoice is not None
        if invoice.organization_id == failing:
            raise RuntimeError("card network down")
        charged.append(invoice.organization_id)

    results = cycle.run_due(db, utc(2026, 2, 1), catalog=CATALOG, charge=charge)
    by_org = {r.due.organization_id: r for r in results}
    assert by_org[failing].error == "RuntimeError: card network down"
    assert by_org[failing].steps_run == ["statement", "expiry", "allocation", "invoice"]
    assert sorted(charged) == sorted(o for o in orgs if o != failing)
    [retried] = cycle.run_due(db, utc(2026, 2, 1, 1), catalog=CATALOG, charge=charge)
    assert retried.error == "RuntimeError: card network down"
    assert len(charged) == 2  # the others were not charged again
