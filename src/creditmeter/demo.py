"""Demo data for a newcomer: ``creditmeter serve --demo`` seeds two organizations with projects, members,
credits from every source and a month of consumption, so the API shows something real at once.

Seeding is idempotent: an organization that already exists (by external id) is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from creditmeter.errors import NotFound
from creditmeter.kit.credits import parse_credits
from creditmeter.ledger import service as ledger
from creditmeter.ledger.domain import LotSource
from creditmeter.orgs import service as orgs
from creditmeter.orgs.service import Environment, Role, Scope

ACME = "demo-acme"
GLOBEX = "demo-globex"


@dataclass(frozen=True)
class DemoKeys:
    operator_key: str
    acme_id: str
    acme_admin_key: str
    globex_id: str


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


def _seed_acme(session: Session, now: datetime) -> str:
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
    usage = [
        ("inference", "42.5"),
        ("training", "610"),
        ("data_processing", "88.25"),
        ("inference", "130.75"),
        ("training", "940"),
        ("inference", "12.125"),
    ]
    for operation, amount in usage:
        ledger.debit(session, org.id, "live", _credits(amount), operation, f"demo {operation}", now)
    ledger.grant(
        session,
        org.id,
        "test",
        ledger.GrantRequest(_credits("100"), LotSource.PROMO, "Sandbox credits", now, None),
        now,
    )
    return org.id


def _seed_globex(session: Session, now: datetime) -> str:
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
    ledger.debit(session, org.id, "live", _credits("1042.5"), "training", "demo training run", now)
    return org.id


def seed(session: Session, now: datetime) -> DemoKeys:
    """Create the demo organizations if missing, and fresh keys to explore them with."""
    acme = _existing(session, ACME) or _seed_acme(session, now)
    globex = _existing(session, GLOBEX) or _seed_globex(session, now)
    _, operator_key = orgs.create_api_key(
        session, None, "demo operator", [Scope.OPERATOR], Environment.LIVE, now
    )
    _, admin_key = orgs.create_api_key(
        session, acme, "demo admin", [Scope.ORG_ADMIN], Environment.LIVE, now
    )
    return DemoKeys(operator_key, acme, admin_key, globex)
