"""The gate's one-statement read (``gate.snapshot``) against the real databases: for random histories
of grants (some expired, some not yet effective, in both environments), debits into arrears and holds
(some already past their time), the available balance it reads equals an independent calculation and
the session-based ``gate.available_micros`` the rest of the service uses; it resolves keys and
organizations exactly like ``orgs.authenticate`` and ``gate.resolve_organization``."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from creditmeter.errors import Unauthorized
from creditmeter.kit.db import Database
from creditmeter.ledger import domain
from creditmeter.ledger import service as ledger
from creditmeter.ledger.models import Balance, Lot
from creditmeter.metering import gate, holds
from creditmeter.metering.models import Hold
from creditmeter.orgs import service as orgs
from creditmeter.orgs.service import Environment, Scope
from tests.conftest import utc

NOW = utc(2026, 3, 10, 12)
DB_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass(frozen=True)
class Grant:
    micros: int
    env: str
    starts: int  # hours from NOW; > 0 is not yet effective
    expires: int | None  # hours from NOW; <= 0 has expired


@dataclass(frozen=True)
class HoldStep:
    micros: int
    ttl_hours: int  # the hold is placed 2 hours before NOW; ttl <= 2 has lapsed by NOW


grants = st.builds(
    Grant,
    micros=st.integers(1, 5_000_000),
    env=st.sampled_from(["live", "test"]),
    starts=st.integers(-48, 3),
    expires=st.one_of(st.none(), st.integers(-3, 72)),
)
holds_ = st.builds(HoldStep, micros=st.integers(1, 400_000), ttl_hours=st.integers(1, 5))


def _key(db: Database, org: str | None, scopes: list[Scope], env: str) -> str:
    with db.write() as s:
        _, secret = orgs.create_api_key(s, org, "k", scopes, Environment(env), NOW)
    return secret


@pytest.mark.usefixtures("db")
@DB_SETTINGS
@given(
    grant_steps=st.lists(grants, max_size=6),
    debit_steps=st.lists(st.integers(1, 3_000_000), max_size=4),
    hold_steps=st.lists(holds_, max_size=3),
)
def test_the_one_statement_read_equals_the_ledger(
    db: Database, grant_steps: list[Grant], debit_steps: list[int], hold_steps: list[HoldStep]
) -> None:
    with db.write() as s:
        org = orgs.create_organization(s, "Acme", None, NOW - timedelta(days=3)).id
    placed_at = NOW - timedelta(hours=2)
    with db.write() as s:
        for g in grant_steps:
            starts = NOW + timedelta(hours=g.starts)
            expires = None if g.expires is None else NOW + timedelta(hours=g.expires)
            if expires is not None and expires <= starts:
                continue
            request = ledger.GrantRequest(
                g.micros, domain.LotSource.PROMO, "p", starts, expires, cost_basis_micros=0
            )
            ledger.grant(s, org, g.env, request, min(starts, NOW))
    with db.write() as s:
        for amount in debit_steps:
            ledger.debit(s, org, "live", amount, "inference", "d", placed_at)
    with db.write() as s:
        for h in hold_steps:
            request = holds.HoldRequest(
                org, "active", "live", None, "inference", h.micros, h.ttl_hours * 3600
            )
            with contextlib.suppress(holds.HoldRefused):
                holds.place(s, request, placed_at)
    live = _key(db, org, [Scope.ORG_INGEST], "live")
    test = _key(db, None, [Scope.OPERATOR], "test")
    for secret, env in ((live, "live"), (test, "test")):
        snap = gate.snapshot(db.hot_engine, secret, org, NOW, 60)
        with db.read() as s:
            expected = gate.available_micros(s, org, env, NOW)
            independent = _independent_available(s, org, env, NOW)
        assert snap.organization_id == org
        assert snap.status == "active"
        assert snap.principal.environment == env
        assert snap.available_micros == expected == independent


def _independent_available(s: Session, org: str, env: str, now: datetime) -> int:
    """Usable lots - arrears - holds still in time, each summed in Python from its own table."""
    lots = s.scalars(select(Lot).where(Lot.organization_id == org, Lot.environment == env)).all()
    usable = sum(
        lot.remaining_micros
        for lot in lots
        if lot.remaining_micros > 0
        and lot.effective_at <= now
        and (lot.expires_at is None or lot.expires_at > now)
    )
    balance = s.get(Balance, (org, env))
    active = s.scalars(
        select(Hold).where(
            Hold.organization_id == org, Hold.environment == env, Hold.status == "active"
        )
    ).all()
    held = sum(h.credits_micros for h in active if h.expires_at > now)
    assert balance is not None
    return usable - balance.arrears_micros - held


def test_keys_and_organizations_resolve_like_the_session_path(db: Database) -> None:
    with db.write() as s:
        acme = orgs.create_organization(s, "Acme", "acme-ext", NOW).id
        # An organization whose external id is Acme's id: the id wins, as in resolve_organization.
        other = orgs.create_organization(s, "Other", acme, NOW).id
    key = _key(db, acme, [Scope.ORG_INGEST], "live")
    assert gate.snapshot(db.hot_engine, key, acme, NOW, 60).organization_id == acme
    assert gate.snapshot(db.hot_engine, key, "acme-ext", NOW, 60).organization_id == acme
    assert gate.snapshot(db.hot_engine, key, other, NOW, 60).organization_id == other
    for ref in ("org_nope", "", "acme-ext\x00", "' OR 1=1 --"):
        snap = gate.snapshot(db.hot_engine, key, ref, NOW, 60)
        assert (snap.organization_id, snap.status) == (None, None)
    with pytest.raises(Unauthorized):
        gate.snapshot(db.hot_engine, "cm_live_unknown", acme, NOW, 60)
    principal = gate.snapshot(db.hot_engine, key, acme, NOW, 60).principal
    assert principal.organization_id == acme
    assert principal.scopes == frozenset({"org:ingest"})
    assert principal.environment == "live"
    assert orgs.authenticate(db.hot_engine, key, NOW, 60)[0] == principal


def test_the_key_use_is_due_once_per_touch_interval(db: Database) -> None:
    with db.write() as s:
        acme = orgs.create_organization(s, "Acme", None, NOW).id
        key_row, key = orgs.create_api_key(s, acme, "k", [Scope.ORG_INGEST], Environment.LIVE, NOW)
    assert gate.snapshot(db.hot_engine, key, acme, NOW, 60).touch_due is True
    with db.write() as s:
        orgs.touch_api_key(s, key_row.id, NOW)
    assert (
        gate.snapshot(db.hot_engine, key, acme, NOW + timedelta(seconds=59), 60).touch_due is False
    )
    assert (
        gate.snapshot(db.hot_engine, key, acme, NOW + timedelta(seconds=60), 60).touch_due is True
    )
    with db.write() as s:
        orgs.revoke_api_key(s, acme, key_row.id, NOW)
    with pytest.raises(Unauthorized):
        gate.snapshot(db.hot_engine, key, acme, NOW, 60)


def test_a_hot_read_survives_the_server_closing_its_connection(db: Database) -> None:
    if db.dialect != "postgresql":
        pytest.skip("PostgreSQL only: the server closing a pooled connection")
    with db.write() as s:
        acme = orgs.create_organization(s, "Acme", None, NOW).id
    key = _key(db, acme, [Scope.ORG_INGEST], "live")
    assert gate.snapshot(db.hot_engine, key, acme, NOW, 60).organization_id == acme
    with db.engine.connect() as conn:  # end every other session of this database
        conn.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    assert gate.snapshot(db.hot_engine, key, acme, NOW, 60).organization_id == acme
