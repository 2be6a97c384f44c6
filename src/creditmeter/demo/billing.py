"""The demo's billing story: Orbital Labs, a test organization billed on a test clock for four months.

It runs through the real services, as an operator rehearsing billing would: a test clock frozen at the
story's start, the organization attached to it, the sandbox's card that succeeds, a Professional
subscription; then, month by month, the AI Engine's usage and a clock advance across each month's end
(which closes the month: statement, rollover and expiry, the next allocation, the invoice and its
charge). In the second month it buys the Standard package with the card. Before the fourth month ends
its default card becomes the sandbox's declined card: that invoice fails, is retried on the dunning
schedule and ends past due, and the organization is suspended. The clock stops a week into the month
after (always in the past): 3 paid invoices, 1 past due, a purchase, payments and PDFs to look at.

Re-runnable: the story is a list of steps at fixed times derived from the organization's creation.
A step the clock has passed is done; the others run, each idempotent (usage ids, the purchase's key,
"add the card unless it is there"), so a run interrupted anywhere finishes on the next one.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from creditmeter.billing import domain, test_clocks
from creditmeter.billing import subscriptions as subs
from creditmeter.billing.domain import Catalog
from creditmeter.billing.payments import methods
from creditmeter.billing.payments.provider import CardSource, PaymentProvider
from creditmeter.billing.purchases import PurchaseRequest, purchase
from creditmeter.errors import NotFound
from creditmeter.kit.db import Database
from creditmeter.metering.domain import EventInput
from creditmeter.metering.ingest import IngestContext, ingest
from creditmeter.orgs import service as orgs
from creditmeter.orgs.service import Role
from creditmeter.pricing.domain import RateCard

ORBITAL = "demo-orbital"
ENV = "test"
GOOD_CARD, DECLINED_CARD = "4242424242424242", "4000000000000002"
MONTHS = 4
#: Where the clock stops after the last month's end: past the dunning retries (1, 3 and 5 days).
AFTER_LAST_CLOSE = timedelta(days=7, hours=12)


@dataclass(frozen=True)
class Orbital:
    """The organization, its test clock and the clock's time when the story is done."""

    organization_id: str
    test_clock_id: str
    clock_time: datetime


@dataclass(frozen=True)
class _Org:
    id: str
    clock_id: str
    start: datetime


@dataclass(frozen=True)
class _Story:
    start: datetime
    months: list[domain.Period]
    end: datetime


def _story(start: datetime, catalog: Catalog) -> _Story:
    first = domain.period_of(start, catalog.zone)
    months = [domain.shift(first, n, catalog.zone) for n in range(MONTHS)]
    return _Story(start, months, months[-1].end + AFTER_LAST_CLOSE)


def _start_for(now: datetime, catalog: Catalog) -> datetime:
    """The story's start for a first run at ``now``: its clock ends at or before ``now``."""
    last_close = domain.period_of(now, catalog.zone)
    while last_close.start + AFTER_LAST_CLOSE > now:
        last_close = domain.shift(last_close, -1, catalog.zone)
    first = domain.shift(last_close, -MONTHS, catalog.zone)
    return first.start + timedelta(days=2, hours=9)


def _card(number: str) -> CardSource:
    return CardSource(number=number, exp_month=12, exp_year=2035, cvc="123")


def _has_card(db: Database, org_id: str, number: str) -> bool:
    with db.read() as session:
        return any(m.last4 == number[-4:] for m in methods.active_methods(session, org_id, ENV))


def _set_up(db: Database, start: datetime, now: datetime) -> _Org:
    """The organization with its projects and members, attached to a new clock at ``start``."""
    with db.write() as session:
        org = orgs.create_organization(session, "Orbital Labs", ORBITAL, start)
        for name in ("assistant", "fine-tuning"):
            orgs.create_project(session, org.id, name, start)
        orgs.add_member(session, org.id, "olga@orbital.example", Role.OWNER, start)
        orgs.add_member(session, org.id, "omar@orbital.example", Role.MEMBER, start)
        clock = test_clocks.create(session, start, "Orbital Labs demo", now)
        test_clocks.attach(session, org.id, clock.id, now)
    return _Org(org.id, clock.id, start)


def _subscribe(
    db: Database, provider: PaymentProvider, catalog: Catalog, org: _Org, at: datetime
) -> None:
    """The card that succeeds, as the default; a Professional subscription."""
    if not _has_card(db, org.id, GOOD_CARD):
        methods.add(db, provider, org.id, ENV, _card(GOOD_CARD), True, at)
    with db.write() as session:
        try:
            subs.get(session, catalog, org.id, ENV, at)
        except NotFound:
            request = subs.SubscriptionRequest("professional")
            subs.subscribe(session, catalog, org.id, ENV, request, at)


def _usage(
    db: Database, rate_card: RateCard, org: _Org, month: domain.Period, at: datetime
) -> None:
    """The month's AI Engine traffic up to ``at``: assistant inference four times a day, growing
    month by month, and a fine-tuning run every Tuesday."""
    rng = random.Random(month.start.toordinal())  # noqa: S311 - demo data, not security
    growth = 0.7 + 0.25 * (month.month % 3)
    events: list[EventInput] = []
    moment = max(month.start, org.start) + timedelta(hours=1)
    while moment < at:
        tokens_in = int(rng.randint(6_000_000, 12_000_000) * growth)
        events.append(
            EventInput(
                id=f"orbital-assistant-{moment:%Y%m%d%H}",
                organization=org.id,
                operation="inference",
                quantities={"input_tokens": str(tokens_in), "output_tokens": str(tokens_in // 4)},
                project="assistant",
                member="omar@orbital.example",
                occurred_at=moment,
            )
        )
        if moment.weekday() == 1 and moment.hour == 13:
            events.append(
                EventInput(
                    id=f"orbital-fine-tune-{moment:%Y%m%d}",
                    organization=org.id,
                    operation="training",
                    quantities={
                        "gpu_seconds": str(rng.randint(36_000, 72_000)),
                        "accelerator": "h100",
                    },
                    project="fine-tuning",
                    member="olga@orbital.example",
                    occurred_at=moment,
                )
            )
        moment += timedelta(hours=6)
    context = IngestContext(ENV, None, at, rate_card, timedelta(days=35), timedelta(0), "USD")
    with db.write() as session:
        results = ingest(session, context, events)
    failed = [r.error for r in results if r.error is not None]
    if failed:
        raise RuntimeError(f"demo usage was refused: {failed[0]}")


def seed_orbital(
    db: Database,
    now: datetime,
    rate_card: RateCard,
    catalog: Catalog,
    provider: PaymentProvider,
) -> Orbital:
    """Run (or finish) Orbital Labs' story; returns the organization and its clock's time."""
    with db.read() as session:
        try:
            existing = orgs.resolve_organization(session, ORBITAL)
            attached = test_clocks.attachment_of(session, existing.id)
        except NotFound:
            existing, attached = None, None
    if existing is None:
        org = _set_up(db, _start_for(now, catalog), now)
    elif attached is None:  # detached by hand since: the organization is the operator's now
        return Orbital(existing.id, "", now)
    else:
        org = _Org(existing.id, attached[0].id, existing.created_at)
    story = _story(org.start, catalog)
    for at, step in _steps(story, db, rate_card, catalog, provider, org):
        with db.read() as session:
            clock_time = test_clocks.get(session, org.clock_id).frozen_time
        if clock_time > at:
            continue  # done by an earlier run
        if clock_time < at:
            test_clocks.advance(db, catalog, org.clock_id, at, now=now, provider=provider)
        step()
    return Orbital(org.id, org.clock_id, story.end)


def _steps(
    story: _Story,
    db: Database,
    rate_card: RateCard,
    catalog: Catalog,
    provider: PaymentProvider,
    org: _Org,
) -> list[tuple[datetime, Callable[[], None]]]:
    """The story's steps in time order: (the clock's time, what happens then)."""
    steps: list[tuple[datetime, Callable[[], None]]] = [
        (story.start, partial(_subscribe, db, provider, catalog, org, story.start))
    ]
    for n, month in enumerate(story.months):
        at = month.end - timedelta(hours=2)
        steps.append((at, partial(_usage, db, rate_card, org, month, at)))
        if n == 1:
            bought = month.start + timedelta(days=14, hours=15)
            steps.append((bought, partial(_buy_package, db, provider, catalog, org, bought)))
        if n == len(story.months) - 1:
            swapped = month.start + timedelta(days=20, hours=10)
            steps.append((swapped, partial(_declined_card, db, provider, org, swapped)))
    steps.append((story.end, lambda: None))
    return sorted(steps, key=lambda s: s[0])


def _buy_package(
    db: Database, provider: PaymentProvider, catalog: Catalog, org: _Org, at: datetime
) -> None:
    """The Standard package, charged to the card (the key makes a rerun return the same one)."""
    request = PurchaseRequest(package="standard")
    purchase(db, provider, catalog, org.id, ENV, request, "demo-orbital-package", now=at)


def _declined_card(db: Database, provider: PaymentProvider, org: _Org, at: datetime) -> None:
    """The card on file is replaced by one the processor declines (the next invoice fails)."""
    if not _has_card(db, org.id, DECLINED_CARD):
        methods.add(db, provider, org.id, ENV, _card(DECLINED_CARD), True, at)
