"""`serve --demo`'s seed, in-process on SQLite and PostgreSQL: three organizations through the real
services, Orbital Labs billed for four months on a test clock; idempotent, resumable, and a banner
that fits an 80-column terminal."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from creditmeter import demo
from creditmeter.billing.models import Invoice
from creditmeter.billing.payments.models import Payment, Purchase
from creditmeter.billing.plans import load_catalog
from creditmeter.demo import billing as demo_billing
from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.ledger.verify import verify
from creditmeter.metering.models import UsageEvent
from creditmeter.metering.verify import CHECKS
from creditmeter.orgs import service as orgs
from creditmeter.pricing.ratecard import load_rate_card
from tests.conftest import utc

C = 1_000_000
NOW = utc(2026, 11, 25, 12)
CARD = load_rate_card()


def billing_of(db: Database, org: str) -> dict[str, Any]:
    with db.read() as s:
        invoices = s.execute(
            select(Invoice.number, Invoice.status, Invoice.period_start, Invoice.total_minor)
            .where(Invoice.organization_id == org)
            .order_by(Invoice.period_start)
        ).all()
        payments = s.execute(
            select(Payment.purpose, Payment.status, Payment.amount_minor, Payment.created_at)
            .where(Payment.organization_id == org)
            .order_by(Payment.created_at, Payment.id)
        ).all()
        purchases = s.execute(
            select(Purchase.package, Purchase.status).where(Purchase.organization_id == org)
        ).all()
        events = s.scalar(
            select(func.count()).select_from(UsageEvent).where(UsageEvent.organization_id == org)
        )
        status = orgs.get_organization(s, org).status
    return {
        "invoices": [tuple(r) for r in invoices],
        "payments": [tuple(r) for r in payments],
        "purchases": [tuple(r) for r in purchases],
        "events": events,
        "status": status,
    }


def test_the_demo_shows_the_whole_product_and_runs_again(db: Database) -> None:
    first = demo.seed(db, NOW, CARD)
    story = billing_of(db, first.orbital_id)

    # Orbital Labs: subscribed in July on a clock; July to October closed, invoiced and charged.
    assert [(n, s, p.month) for n, s, p, _ in story["invoices"]] == [
        ("INV-TEST-2026-000001", "paid", 7),
        ("INV-TEST-2026-000002", "paid", 8),
        ("INV-TEST-2026-000003", "paid", 9),
        ("INV-TEST-2026-000004", "past_due", 10),
    ]
    assert story["purchases"] == [("standard", "succeeded")]
    charges = [(purpose, status) for purpose, status, _, _ in story["payments"]]
    assert charges.count(("purchase", "succeeded")) == 1
    assert charges.count(("invoice", "succeeded")) == 3
    assert charges.count(("invoice", "failed")) == 4  # at the close, then 1, 3 and 5 days later
    assert story["status"] == "suspended"
    assert story["events"] > 4 * 100
    assert first.orbital_clock_time == utc(2026, 11, 8, 12)
    assert first.orbital_clock_time <= NOW  # the clock is never ahead of real time

    with db.read() as s:
        acme = ledger.get_balance(s, first.acme_id, "live", NOW)
        globex = ledger.get_balance(s, first.globex_id, "live", NOW)
        assert len(orgs.list_projects(s, first.acme_id, None, 10)[0]) == 3
        assert len(orgs.list_members(s, first.acme_id, None, 10)[0]) == 4
        assert verify(s, extra_checks=CHECKS) == []
    assert acme.held_micros == 150 * C
    assert not acme.paused
    assert (globex.paused, globex.arrears_micros > 0) == (True, True)

    # Again, later: the same organizations and story, nothing billed twice, new keys.
    second = demo.seed(db, utc(2027, 1, 20), CARD)
    assert (second.acme_id, second.globex_id, second.orbital_id) == (
        first.acme_id,
        first.globex_id,
        first.orbital_id,
    )
    assert second.orbital_clock_time == first.orbital_clock_time
    assert billing_of(db, first.orbital_id) == story
    assert len({first.operator_key, second.operator_key}) == 2
    assert len({first.orbital_admin_key, second.orbital_admin_key}) == 2
    assert second.orbital_admin_key.startswith("cm_test_")


def test_an_interrupted_story_is_finished_by_the_next_run(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = demo_billing._declined_card

    def crash(*args: Any) -> None:
        raise RuntimeError("killed")

    monkeypatch.setattr(demo_billing, "_declined_card", crash)
    with pytest.raises(RuntimeError, match="killed"):
        demo.seed(db, NOW, CARD)
    monkeypatch.setattr(demo_billing, "_declined_card", real)
    keys = demo.seed(db, NOW, CARD)
    story = billing_of(db, keys.orbital_id)
    assert [s for _, s, _, _ in story["invoices"]] == ["paid", "paid", "paid", "past_due"]
    assert story["purchases"] == [("standard", "succeeded")]
    assert story["status"] == "suspended"
    with db.read() as s:
        assert verify(s, extra_checks=CHECKS) == []


@pytest.mark.parametrize("now", [utc(2026, 3, 5, 8), utc(2026, 3, 9, 0)])
def test_the_clock_stops_a_week_after_the_last_close_and_never_after_now(now: datetime) -> None:
    start = demo_billing._start_for(now, load_catalog())
    end = demo_billing._story(start, load_catalog()).end
    assert end <= now
    assert (now - end).days < 32


def test_the_banner_fits_80_columns_and_keys_stay_whole(db: Database) -> None:
    keys = demo.seed(db, NOW, CARD)
    text = demo.banner(keys, "http://127.0.0.1:8000")
    assert all(len(line) <= 80 for line in text.splitlines()), text
    for key in (keys.operator_key, keys.acme_admin_key, keys.orbital_admin_key):
        assert re.search(rf"^  export \w+={re.escape(key)}$", text, re.MULTILINE)
    assert "/v1/organizations/demo-acme/balance" in text
    assert "/v1/organizations/demo-orbital/invoices" in text
    assert "2026-11-08" in text
    assert ("CREDITMETER_DATABASE_URL" in text) == (db.url != "sqlite:///var/creditmeter.db")
