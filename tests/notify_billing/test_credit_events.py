"""Every lot billing grants publishes ``credits.granted`` and every expiry run ``credits.expired``,
once, on SQLite and PostgreSQL: the first allocation, the cycle close's allocation and overage
settlement (resumed after a crash and run again), an operator's grant through the API (retried
with its Idempotency-Key); the close's expiry, the worker's real-time expiry and a test clock's."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from creditmeter.billing import cycle, test_clocks
from creditmeter.billing import subscriptions as subs
from creditmeter.billing.cycle import Due
from creditmeter.billing.plans import load_catalog
from creditmeter.billing.subscriptions import SubscriptionRequest
from creditmeter.kit import clock
from creditmeter.kit.credits import MICROS_PER_CREDIT as C
from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.ledger.domain import LotSource
from creditmeter.ledger.models import JournalTransaction, Lot
from tests.conftest import utc
from tests.notify_billing.events import data, one, published

CATALOG = load_catalog()
MakeOrg = Callable[..., str]
Headers = dict[str, str]
FEB_1 = utc(2026, 2, 1)


def subscribe(db: Database, org: str, plan: str, at: datetime, **terms: Any) -> None:
    with db.write() as session:
        request = SubscriptionRequest(plan, **terms)
        subs.subscribe(session, CATALOG, org, "live", request, at)


def spend(db: Database, org: str, credits: int, at: datetime) -> None:
    with db.write() as session:
        ledger.debit(session, org, "live", credits * C, "inference", "test usage", at)


def close(db: Database, at: datetime, org: str | None = None, **kw: Any) -> list[Any]:
    results = cycle.run_due(db, at, org, catalog=CATALOG, charge=lambda *_: None, **kw)
    assert all(r.ok for r in results) or "after_step" in kw, results
    return results


def crash_after(step_name: str) -> Callable[[Due, str], None]:
    def crash(item: Due, step: str) -> None:
        if step == step_name:
            raise RuntimeError(f"power cut after {step}")

    return crash


def lot_ids(db: Database, org: str) -> list[str]:
    with db.read() as session:
        return list(
            session.scalars(
                select(Lot.id).where(Lot.organization_id == org).order_by(Lot.created_at, Lot.id)
            )
        )


def test_every_lot_billing_grants_is_published_once(db: Database, make_org: MakeOrg) -> None:
    pro, big = make_org("Pro Co"), make_org("Big Co")
    subscribe(db, pro, "professional", utc(2026, 1, 16))
    subscribe(db, big, "enterprise", utc(2026, 1, 1), allocation_micros=1000 * C)
    spend(db, big, 1250, utc(2026, 1, 20))  # 250 credits of overage
    close(db, FEB_1, after_step=crash_after("allocation"))
    close(db, utc(2026, 2, 1, 0, 5))
    close(db, utc(2026, 2, 1, 0, 10))

    first, february = published(db, "credits.granted", pro)
    assert first.source_key == f"credits.granted:{first.data['lot_id']}"
    assert (first.environment, first.occurred_at) == ("live", utc(2026, 1, 16))
    assert first.data == {
        "lot_id": lot_ids(db, pro)[0],
        "source": "plan",
        "credits": "2580.645161",
        "effective_at": "2026-01-16T00:00:00Z",
        "expires_at": "2026-05-01T00:00:00Z",
        "reason": "Professional plan credits for 2026-01 "
        "(prorated from 2026-01-16T00:00:00Z to the end of the cycle)",
    }
    assert february.occurred_at == FEB_1
    assert february.data == {
        "lot_id": lot_ids(db, pro)[1],
        "source": "plan",
        "credits": "5000",
        "effective_at": "2026-02-01T00:00:00Z",
        "expires_at": "2026-06-01T00:00:00Z",
        "reason": "Professional plan credits for 2026-02",
    }
    granted = data(db, "credits.granted", big)
    assert [(g["source"], g["credits"]) for g in granted] == [
        ("plan", "1000"),
        ("adjustment", "250"),  # the overage settled at the close, billed on the invoice
        ("plan", "1000"),
    ]
    assert granted[1]["reason"] == "overage of 2026-01 billed on the invoice of 2026-01"
    assert sorted(g["lot_id"] for g in granted) == sorted(lot_ids(db, big))


def test_an_operator_grant_through_the_api_is_published_once(
    client: TestClient, db: Database, make_org: MakeOrg, operator: Headers
) -> None:
    org = make_org("Granted Co")
    body = {"credits": "12.5", "source": "promo", "reason": "launch week",
            "expires_at": "2026-03-01T00:00:00Z"}  # fmt: skip
    with clock.frozen_at(utc(2026, 1, 10, 9)):
        for _ in range(2):  # a retry with the same key returns the first lot
            response = client.post(
                f"/v1/organizations/{org}/grants",
                json=body,
                headers={**operator, "Idempotency-Key": "grant-1"},
            )
            assert response.status_code == 201, response.text
    event = one(db, "credits.granted", org)
    assert event.occurred_at == utc(2026, 1, 10, 9)
    assert event.data == {
        "lot_id": response.json()["id"],
        "source": "promo",
        "credits": "12.5",
        "effective_at": "2026-01-10T09:00:00Z",
        "expires_at": "2026-03-01T00:00:00Z",
        "reason": "launch week",
    }


def expiry_transactions(db: Database, org: str) -> list[int]:
    with db.read() as session:
        return list(
            session.scalars(
                select(JournalTransaction.id)
                .where(
                    JournalTransaction.organization_id == org, JournalTransaction.kind == "expiry"
                )
                .order_by(JournalTransaction.id)
            )
        )


@pytest.mark.parametrize("crash", ["expiry", None])
def test_the_close_publishes_the_credits_it_expires_once(
    db: Database, make_org: MakeOrg, crash: str | None
) -> None:
    org = make_org("Standard Co")
    subscribe(db, org, "standard", utc(2026, 1, 1))
    spend(db, org, 300, utc(2026, 1, 20))
    close(db, FEB_1, **({"after_step": crash_after(crash)} if crash else {}))
    close(db, utc(2026, 2, 1, 0, 5))
    close(db, utc(2026, 2, 1, 0, 10))

    [txn] = expiry_transactions(db, org)
    event = one(db, "credits.expired", org)
    assert (event.environment, event.occurred_at) == ("live", FEB_1)
    assert event.source_key == f"credits.expired:txn_{txn}"
    assert event.data == {
        "credits": "700",
        "lots": [{"lot_id": lot_ids(db, org)[0], "credits": "700"}],
    }


def grant(db: Database, org: str, credits: int, at: datetime, expires_at: datetime) -> str:
    request = ledger.GrantRequest(
        amount_micros=credits * C,
        source=LotSource.PROMO,
        reason="promo",
        effective_at=at,
        expires_at=expires_at,
    )
    with db.write() as session:
        return ledger.grant(session, org, "live", request, at)


def test_the_workers_expiry_and_a_test_clocks_publish_each_run_once(
    db: Database, make_org: MakeOrg
) -> None:
    real, clocked = make_org("Real Time Co"), make_org("Clocked Co")
    a = grant(db, real, 10, utc(2026, 1, 1), utc(2026, 1, 20))
    b = grant(db, real, 5, utc(2026, 1, 1), utc(2026, 1, 21))
    grant(db, real, 7, utc(2026, 1, 1), utc(2026, 6, 1))  # not due
    c = grant(db, clocked, 3, utc(2026, 1, 1), utc(2026, 1, 20))
    with db.write() as session:
        clock_ = test_clocks.create(session, utc(2026, 1, 10), "rehearsal", utc(2026, 1, 10))
        test_clocks.attach(session, clocked, clock_.id, utc(2026, 1, 10))

    for _ in range(2):  # the worker's ticks on January 22: the clocked organization is left alone
        with db.write() as session:
            test_clocks.expire_due_on_real_time(session, utc(2026, 1, 22))
    event = one(db, "credits.expired", real)
    assert event.occurred_at == utc(2026, 1, 22)
    assert event.data["credits"] == "15"
    assert sorted(event.data["lots"], key=lambda lot: lot["credits"]) == [
        {"lot_id": a, "credits": "10"},
        {"lot_id": b, "credits": "5"},
    ]
    assert published(db, "credits.expired", clocked) == []

    test_clocks.advance(db, CATALOG, clock_.id, utc(2026, 1, 25), now=utc(2026, 1, 10))
    test_clocks.advance(db, CATALOG, clock_.id, utc(2026, 1, 26), now=utc(2026, 1, 10))
    on_clock = one(db, "credits.expired", clocked)
    assert on_clock.occurred_at == utc(2026, 1, 25)
    assert on_clock.data == {"credits": "3", "lots": [{"lot_id": c, "credits": "3"}]}
