"""The demo's live organizations: Acme AI with projects, members, credits from every source, two weeks
of metered usage, a hold and a project budget; Globex Research, paused after a training run used more
than it had. An organization that already exists (by external id) is left as it is."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from creditmeter.errors import NotFound
from creditmeter.kit.credits import parse_credits
from creditmeter.ledger import service as ledger
from creditmeter.ledger.domain import LotSource
from creditmeter.metering import holds
from creditmeter.metering.domain import EventInput
from creditmeter.metering.ingest import IngestContext, ingest
from creditmeter.orgs import service as orgs
from creditmeter.orgs.models import Project
from creditmeter.orgs.service import Role
from creditmeter.pricing.domain import RateCard

ACME = "demo-acme"
GLOBEX = "demo-globex"


def _credits(amount: str) -> int:
    return parse_credits(amount)


def _first_of_next_month(now: datetime) -> datetime:
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (start + timedelta(days=32)).replace(day=1)


def _existing(session: Session, external_id: str) -> str | None:
    try:
        return orgs.resolve_organization(session, external_id).id
    except NotFound:
        return None


def _context(now: datetime, rate_card: RateCard) -> IngestContext:
    return IngestContext("live", None, now, rate_card, timedelta(days=35), timedelta(0), "USD")


def _usage(session: Session, org_id: str, now: datetime, rate_card: RateCard) -> None:
    """Two weeks of an AI Engine's traffic, recorded through the real ingest path: inference for
    the chatbot every hour, nightly data processing, and a few training runs on GPUs."""
    rng = random.Random(20261125)  # noqa: S311 - demo data, not security
    people = ["alice@acme.example", "bob@acme.example", "carol@acme.example"]
    events: list[EventInput] = []
    for hours_ago in range(14 * 24, 0, -1):
        at = now - timedelta(hours=hours_ago)
        tokens_in, tokens_out = rng.randint(20_000, 400_000), rng.randint(5_000, 120_000)
        events.append(
            EventInput(
                id=f"acme-inference-{hours_ago}",
                organization=org_id,
                operation="inference",
                quantities={"input_tokens": str(tokens_in), "output_tokens": str(tokens_out)},
                project="chatbot",
                member=rng.choice(people),
                occurred_at=at,
                cache_hit=rng.random() < 0.3,
            )
        )
        if at.hour == 2:
            events.append(
                EventInput(
                    id=f"acme-etl-{hours_ago}",
                    organization=org_id,
                    operation="data_processing",
                    quantities={
                        "cpu_seconds": str(rng.randint(3_600, 30_000)),
                        "data_gb": str(rng.randint(20, 400)),
                    },
                    project="data-pipeline",
                    member="carol@acme.example",
                    occurred_at=at,
                )
            )
        if hours_ago % 71 == 0:
            events.append(
                EventInput(
                    id=f"acme-training-{hours_ago}",
                    organization=org_id,
                    operation="training",
                    quantities={
                        "gpu_seconds": str(rng.randint(7_200, 36_000)),
                        "accelerator": rng.choice(["a100", "h100"]),
                        "instance_class": "highmem",
                    },
                    project="vision-training",
                    member="bob@acme.example",
                    occurred_at=at,
                )
            )
    ingest(session, _context(now, rate_card), events)


def _seed_acme(session: Session, now: datetime, rate_card: RateCard) -> str:
    org = orgs.create_organization(session, "Acme AI", ACME, now - timedelta(days=20))
    for name in ("chatbot", "vision-training", "data-pipeline"):
        orgs.create_project(session, org.id, name, now)
    for email, role in (
        ("alice@acme.example", Role.OWNER),
        ("bob@acme.example", Role.ADMIN),
        ("carol@acme.example", Role.MEMBER),
        ("dan@acme.example", Role.VIEWER),
    ):
        orgs.add_member(session, org.id, email, role, now)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    grants = [
        (
            "5000",
            LotSource.PLAN,
            "Professional plan: monthly allocation",
            month_start,
            _first_of_next_month(now) + timedelta(days=92),
            0,
        ),
        ("250", LotSource.PROMO, "Welcome promotion", month_start, now + timedelta(days=30), 0),
        (
            "1000",
            LotSource.PURCHASE,
            "Standard package purchase",
            month_start,
            now + timedelta(days=365),
            10_000,
        ),
    ]
    for amount, source, reason, effective, expires, cost in grants:
        ledger.grant(
            session,
            org.id,
            "live",
            ledger.GrantRequest(
                _credits(amount), source, reason, effective, expires, cost_basis_micros=cost
            ),
            now,
        )
    _usage(session, org.id, now, rate_card)
    budget = session.scalars(
        select(Project).where(Project.organization_id == org.id, Project.name == "chatbot")
    ).one()
    budget.monthly_budget_micros = _credits("2000")
    holds.place(
        session,
        holds.HoldRequest(org.id, "active", "live", None, "training", _credits("150"), 6 * 3600),
        now,
    )
    ledger.grant(
        session,
        org.id,
        "test",
        ledger.GrantRequest(_credits("100"), LotSource.PROMO, "Sandbox credits", now, None),
        now,
    )
    return org.id


def _seed_globex(session: Session, now: datetime, rate_card: RateCard) -> str:
    org = orgs.create_organization(session, "Globex Research", GLOBEX, now - timedelta(days=10))
    orgs.create_project(session, org.id, "forecasting", now)
    orgs.add_member(session, org.id, "hank@globex.example", Role.OWNER, now)
    ledger.grant(
        session,
        org.id,
        "live",
        ledger.GrantRequest(
            _credits("1000"),
            LotSource.PLAN,
            "Standard plan: monthly allocation",
            now - timedelta(days=10),
            _first_of_next_month(now),
        ),
        now,
    )
    run = EventInput(
        id="globex-training-run-1",
        organization=org.id,
        operation="training",
        # 1,806 credits at peak, 1,264 in the off-peak window (30% off): past the 1,000 either way.
        quantities={"gpu_seconds": "1500000", "accelerator": "a100", "data_gb": "120"},
        project="forecasting",
        member="hank@globex.example",
        occurred_at=now - timedelta(hours=5),
    )
    ingest(session, _context(now, rate_card), [run])
    return org.id


def seed_live(session: Session, now: datetime, rate_card: RateCard) -> tuple[str, str]:
    """The ids of Acme AI and Globex Research, seeded first if missing."""
    acme = _existing(session, ACME) or _seed_acme(session, now, rate_card)
    globex = _existing(session, GLOBEX) or _seed_globex(session, now, rate_card)
    return acme, globex
